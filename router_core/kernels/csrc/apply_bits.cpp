// Fused "unpack bits and select" for the CPU path: out[n, k] = keep(n, k) ? w[n, k] : 0.
//
// Bit order: bit (7 - k % 8) of bits[n, k / 8] is the keep flag of w[n, k] (MSB first, 1 = keep).
// One pass over W and the bits: each byte is broadcast to 8 lanes, each lane tests its own bit, and
// the resulting all-ones / all-zeros lanes are ANDed with 8 weights at once (GCC vector extensions).
// Works on the raw bit pattern, so any 2-, 4- or 8-byte dtype (fp16, bf16, fp32, fp64) is handled.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

namespace {

// One byte of bits covers 8 consecutive elements of U: one GCC vector of 16, 32 or 64 bytes.
template <typename U>
struct Group {
  typedef U vec_t __attribute__((vector_size(8 * sizeof(U))));
};

// Rows [r0, r1): out = w AND lane_mask(bits), where lane i of the mask is all-ones iff bit 7-i is set.
// Built twice (AVX2 and baseline x86-64) and picked at load time by the CPU's features.
template <typename U>
__attribute__((target_clones("avx2", "default"))) void apply_rows(
    const U* __restrict__ w, const uint8_t* __restrict__ bits, U* __restrict__ out, int64_t r0, int64_t r1,
    int64_t k, int64_t kb) {
  typedef typename Group<U>::vec_t vec_t;
  const vec_t lane_bit = {U(128), U(64), U(32), U(16), U(8), U(4), U(2), U(1)};
  const vec_t zero = {};
  const int64_t full = k / 8;
  for (int64_t n = r0; n < r1; ++n) {
    const U* wr = w + n * k;
    const uint8_t* br = bits + n * kb;
    U* orow = out + n * k;
    for (int64_t j = 0; j < full; ++j) {
      vec_t v;
      std::memcpy(&v, wr + 8 * j, sizeof(vec_t));
      const vec_t keep = (vec_t{} + U(br[j])) & lane_bit;  // broadcast the byte, isolate each lane's bit
      v &= (vec_t)(keep != zero);                           // comparison gives all-ones / all-zeros lanes
      std::memcpy(orow + 8 * j, &v, sizeof(vec_t));
    }
    for (int64_t c = full * 8; c < k; ++c) orow[c] = ((br[c >> 3] >> (7 - (c & 7))) & 1) ? wr[c] : U(0);
  }
}

template <typename U>
void apply_bits_rows(const U* w, const uint8_t* bits, U* out, int64_t n_rows, int64_t k, int64_t kb) {
  // Rows are independent; 16 rows of a 768-wide fp32 layer are ~48 KB of work per task.
  at::parallel_for(0, n_rows, 16, [&](int64_t r0, int64_t r1) { apply_rows<U>(w, bits, out, r0, r1, k, kb); });
}

// Calls f(U{}) with U the unsigned integer type as wide as one element of `t` (2, 4 or 8 bytes): the
// passes work on raw bit patterns, so one instantiation serves every dtype of that width.
template <typename F>
void by_element_width(const torch::Tensor& t, const char* who, F&& f) {
  switch (t.element_size()) {
    case 2: f(uint16_t{}); break;
    case 4: f(uint32_t{}); break;
    case 8: f(uint64_t{}); break;
    default: TORCH_CHECK(false, who, ": unsupported element size ", t.element_size());
  }
}

// weight [N, K] and bits uint8 [N, ceil(K/8)], both on the CPU.
void check_weight_and_bits(const torch::Tensor& weight, const torch::Tensor& bits, const char* who) {
  TORCH_CHECK(weight.device().is_cpu() && bits.device().is_cpu(), who, ": CPU tensors only");
  TORCH_CHECK(weight.dim() == 2, who, ": weight must be [N, K]");
  TORCH_CHECK(bits.scalar_type() == torch::kUInt8 && bits.dim() == 2 && bits.size(0) == weight.size(0) &&
                  bits.size(1) == (weight.size(1) + 7) / 8,
              who, ": bits must be uint8 [N, ceil(K/8)] for a weight [N, K]");
}

// bias as a contiguous [N] tensor of x's dtype, or none.
c10::optional<torch::Tensor> checked_bias(const c10::optional<torch::Tensor>& bias, int64_t n_rows,
                                          const torch::Tensor& x, const char* who) {
  if (!bias.has_value() || !bias->defined()) return c10::nullopt;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n_rows, who, ": bias must be [N]");
  return bias->to(x.scalar_type()).contiguous();
}

// out_block [R, rows] = x [R, K] @ w_block [rows, K]^T (+ bias[n0 : n0 + rows]), single-threaded inside a
// parallel region.
void block_gemm(torch::Tensor out_block, const c10::optional<torch::Tensor>& bias, int64_t n0,
                const torch::Tensor& x, const torch::Tensor& w_block) {
  if (bias.has_value()) at::addmm_out(out_block, bias->narrow(0, n0, w_block.size(0)), x, w_block.t());
  else at::mm_out(out_block, x, w_block.t());
}

// Writes W * unpack(bits) into `out` (same shape and dtype as `weight`, contiguous) and returns it.
// Writing into a caller-owned buffer matters: a fresh 9 MB allocation costs more in page faults
// (~0.5 ms) than the whole pass (~0.15 ms).
torch::Tensor apply_bits_out(const torch::Tensor& weight, const torch::Tensor& bits, torch::Tensor out) {
  check_weight_and_bits(weight, bits, "apply_bits");
  const int64_t n_rows = weight.size(0), k = weight.size(1), kb = bits.size(1);
  auto w = weight.contiguous();
  auto b = bits.contiguous();
  TORCH_CHECK(out.is_contiguous() && out.sizes() == w.sizes() && out.scalar_type() == w.scalar_type(),
              "apply_bits: out must be a contiguous tensor like weight");
  by_element_width(w, "apply_bits", [&](auto width) {
    using U = decltype(width);
    apply_bits_rows(static_cast<const U*>(w.data_ptr()), b.data_ptr<uint8_t>(), static_cast<U*>(out.data_ptr()),
                    n_rows, k, kb);
  });
  return out;
}

// out[:, n] = x @ (W * M)[n, :]^T + bias[n], in blocks of `block_rows` rows of W spread over the threads.
// Each block is masked into a per-thread buffer that stays in L2 and its GEMM reads it from there, so W
// and the bits cross the memory bus once (as in a dense GEMM), instead of W, the bits, a full-size masked
// copy written and that copy read back. Each thread runs its blocks' GEMMs single-threaded (a GEMM inside
// a parallel region does not fan out). x [M, K], weight [N, K], bits [N, KB] uint8; returns [M, N].
torch::Tensor masked_linear_tiled(const torch::Tensor& x, const torch::Tensor& weight,
                                  const c10::optional<torch::Tensor>& bias, const torch::Tensor& bits,
                                  int64_t block_rows) {
  check_weight_and_bits(weight, bits, "masked_linear_tiled");
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.size(1) == weight.size(1),
              "masked_linear_tiled: x must be a CPU tensor [M, K] for a weight [N, K]");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "masked_linear_tiled: x and weight dtypes differ");
  TORCH_CHECK(block_rows > 0, "masked_linear_tiled: block_rows must be positive");
  const int64_t m = x.size(0), n_rows = weight.size(0), k = weight.size(1), kb = bits.size(1);
  auto xc = x.contiguous();
  auto w = weight.contiguous();
  auto b = bits.contiguous();
  const auto bc = checked_bias(bias, n_rows, x, "masked_linear_tiled");
  auto out = at::empty({m, n_rows}, x.options());
  const int64_t n_blocks = (n_rows + block_rows - 1) / block_rows;
  by_element_width(w, "masked_linear_tiled", [&](auto width) {
    using U = decltype(width);
    const U* wp = static_cast<const U*>(w.data_ptr());
    const uint8_t* bp = b.data_ptr<uint8_t>();
    at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
      // Worker threads do not inherit the caller's inference mode, and writing into `out` (an inference
      // tensor when the caller runs under torch.inference_mode) is refused outside it. Nothing here is
      // differentiable anyway.
      c10::InferenceMode inference;
      auto buf = at::empty({block_rows, k}, w.options());  // this thread's block, reused for its blocks
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t n0 = blk * block_rows, rows = std::min(block_rows, n_rows - n0);
        apply_rows<U>(wp + n0 * k, bp + n0 * kb, static_cast<U*>(buf.data_ptr()), 0, rows, k, kb);
        auto wblk = buf.narrow(0, 0, rows);  // [rows, K]
        auto oblk = out.narrow(1, n0, rows);  // [M, rows], row stride N
        block_gemm(oblk, bc, n0, xc, wblk);
      }
    });
  });
  return out;
}


// A mixed-mask batch in one parallel region: out[s0:s1] = x[s0:s1] @ W_s^T + bias for each segment s, where
// W_s is weights[s] as it is (a dense copy, or the unmasked weight) when bits[s] is None, else
// weights[s] * unpack(bits[s]). The segments must cover x's rows in order. The work is cut into tasks of
// one segment and `block_rows` rows of W_s (`dense_block_rows` for a weight used as it is), longest segments
// first, which the threads take from a shared counter; each task's GEMM runs single-threaded in its thread.
// A masked block is built in a per-thread buffer that stays in L2, as in masked_linear_tiled.
//
// Why: one GEMM of a few hundred rows split over the cores by the BLAS runs 10-25% slower per row than one
// of thousands (measured on 2 Xeon cores), and a segment loop pays that once per mask. Single-threaded GEMMs
// side by side, one per core, run near the large GEMM's speed.
torch::Tensor segmented_linear(const torch::Tensor& x, const c10::optional<torch::Tensor>& bias,
                               const std::vector<int64_t>& starts, const std::vector<int64_t>& ends,
                               const std::vector<torch::Tensor>& weights,
                               const std::vector<c10::optional<torch::Tensor>>& bits, int64_t block_rows,
                               int64_t dense_block_rows) {
  const int64_t n_seg = static_cast<int64_t>(starts.size());
  TORCH_CHECK(n_seg > 0 && static_cast<int64_t>(ends.size()) == n_seg &&
                  static_cast<int64_t>(weights.size()) == n_seg && static_cast<int64_t>(bits.size()) == n_seg,
              "segmented_linear: starts, ends, weights and bits must be non-empty lists of one length");
  TORCH_CHECK(block_rows > 0 && dense_block_rows > 0, "segmented_linear: block sizes must be positive");
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2, "segmented_linear: x must be a CPU tensor [R, K]");
  const int64_t m = x.size(0), k = x.size(1), n_rows = weights[0].size(0);
  std::vector<torch::Tensor> ws(n_seg), bs(n_seg);
  for (int64_t s = 0; s < n_seg; ++s) {
    TORCH_CHECK(starts[s] == (s == 0 ? 0 : ends[s - 1]) && ends[s] >= starts[s] && ends[s] <= m,
                "segmented_linear: segments must cover the rows of x in order");
    TORCH_CHECK(weights[s].dim() == 2 && weights[s].size(0) == n_rows && weights[s].size(1) == k &&
                    weights[s].device().is_cpu() && weights[s].scalar_type() == x.scalar_type(),
                "segmented_linear: every weight must be a CPU [N, K] tensor of x's dtype");
    ws[s] = weights[s].contiguous();
    if (bits[s].has_value() && bits[s]->defined()) {
      check_weight_and_bits(ws[s], *bits[s], "segmented_linear");
      bs[s] = bits[s]->contiguous();
    }
  }
  TORCH_CHECK(ends[n_seg - 1] == m, "segmented_linear: segments must cover the rows of x in order");
  auto xc = x.contiguous();
  const auto bc = checked_bias(bias, n_rows, x, "segmented_linear");
  auto out = at::empty({m, n_rows}, x.options());
  // Tasks (segment, first row of W), longest segments first so that the last tasks taken are short.
  std::vector<int64_t> order(n_seg);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return ends[a] - starts[a] > ends[b] - starts[b]; });
  std::vector<std::pair<int64_t, int64_t>> tasks;
  for (int64_t s : order) {
    if (ends[s] == starts[s]) continue;
    const int64_t step = bs[s].defined() ? block_rows : dense_block_rows;
    for (int64_t n0 = 0; n0 < n_rows; n0 += step) tasks.emplace_back(s, n0);
  }
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  std::atomic<int64_t> next{0};
  by_element_width(xc, "segmented_linear", [&](auto width) {
    using U = decltype(width);
    at::parallel_for(0, std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_tasks)), 1,
                     [&](int64_t, int64_t) {
      c10::InferenceMode inference;  // as in masked_linear_tiled: workers do not inherit it
      torch::Tensor buf;  // this thread's masked block, made on its first masked task
      for (int64_t t = next++; t < n_tasks; t = next++) {
        const int64_t s = tasks[t].first, n0 = tasks[t].second;
        const bool masked = bs[s].defined();
        const int64_t rows = std::min(masked ? block_rows : dense_block_rows, n_rows - n0);
        torch::Tensor wblk;  // [rows, K]
        if (masked) {
          if (!buf.defined()) buf = at::empty({block_rows, k}, xc.options());
          const int64_t kb = bs[s].size(1);
          apply_rows<U>(static_cast<const U*>(ws[s].data_ptr()) + n0 * k, bs[s].data_ptr<uint8_t>() + n0 * kb,
                        static_cast<U*>(buf.data_ptr()), 0, rows, k, kb);
          wblk = buf.narrow(0, 0, rows);
        } else {
          wblk = ws[s].narrow(0, n0, rows);
        }
        auto xs = xc.narrow(0, starts[s], ends[s] - starts[s]);  // [R_s, K]
        auto oblk = out.narrow(0, starts[s], ends[s] - starts[s]).narrow(1, n0, rows);  // [R_s, rows], row stride N
        block_gemm(oblk, bc, n0, xs, wblk);
      }
    });
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("apply_bits_out", &apply_bits_out, "out = W * unpack(bits), one pass (CPU)");
  m.def("segmented_linear", &segmented_linear,
        "rows [start, end) of x @ (W_s or W_s * unpack(bits_s))^T + bias per segment, in one parallel region (CPU)");
  m.def("masked_linear_tiled", &masked_linear_tiled, "x @ (W * unpack(bits))^T + bias, W masked block by block (CPU)");
}
