"""Linear probing of a classification head before mask learning (LP-FT), by softmax regression or by
shrinkage LDA in closed form (:func:`lda_projection`)."""

from __future__ import annotations

import torch
from torch import nn

from router_core.errors import InvalidInputError
from router_core.heads import OutputHead

PROBES: tuple[str, ...] = ("softmax", "lda")  # how fit_probe fits a classification head


def fit_probe(head: OutputHead, pooled: torch.Tensor, labels: torch.Tensor, steps: int = 300, lr: float = 1e-2,
              weight_decay: float = 1e-3, method: str = "softmax", shrinkage: float = 0.3) -> float:
    """Linear probing before mask learning (LP-FT): standardise on pooled features ``[N, F]``, then fit
    the projection to ``labels [N]``. Mask learning then starts from a head that already separates the
    classes, instead of from zero with a few items per step. Returns the probe's training accuracy.

    * ``softmax``: full-batch softmax regression, ``min_W,b CE(W (p - mu) / sigma + b, y) +
      weight_decay ||W||^2``;
    * ``lda``: shrinkage linear discriminant analysis in closed form (:func:`lda_projection`), the
      classic back end of speaker recognition: with many features and few items per class it
      generalises where softmax regression overfits."""
    if method not in PROBES:
        raise InvalidInputError(f"probe {method!r} is not one of {PROBES}")
    head.standardize_inputs(pooled)
    inputs = head.standardized(pooled).detach()  # [N, F]
    probe = nn.Linear(inputs.shape[1], head.proj.out_features).to(inputs)
    if method == "lda":
        weight, bias = lda_projection(inputs, labels, head.proj.out_features, shrinkage)
        with torch.no_grad():
            probe.weight.copy_(weight)
            probe.bias.copy_(bias)
    else:
        optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(probe(inputs), labels).backward()
                optimizer.step()
    with torch.no_grad():
        head.proj.weight.copy_(probe.weight)
        head.proj.bias.copy_(probe.bias)
        return float((probe(inputs).argmax(dim=-1) == labels).float().mean())


def lda_projection(
    inputs: torch.Tensor, labels: torch.Tensor, classes: int, shrinkage: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrinkage LDA as a linear layer: ``(weight [K, F], bias [K])`` for features ``inputs [N, F]`` and
    ``labels [N]`` in ``[0, K)``.

    Each class is a Gaussian with mean ``mu_k`` and one covariance shared by all, the pooled within-class
    ``C = sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T / (N - K)``, shrunk toward its mean variance:
    ``C_l = (1 - l) C + l (tr C / F) I``. The class posterior is then a softmax of
    ``W_k = C_l^{-1} mu_k``, ``b_k = -1/2 mu_k^T C_l^{-1} mu_k + log pi_k`` with ``pi_k = (n_k + 1) / (N + K)``.
    A class absent from ``labels`` gets the overall mean (zero for standardised inputs). With more
    features than items, ``C_l^{-1}`` is applied through the ``N x N`` Gram matrix (Woodbury):
    ``(a I + c R^T R)^{-1} = (I - R^T (a/c I + R R^T)^{-1} R) / a`` with ``R`` the centred items."""
    if not 0.0 < shrinkage <= 1.0:
        raise InvalidInputError(f"LDA shrinkage must be in (0, 1], got {shrinkage}")
    x = inputs.double()  # [N, F]
    n, f = x.shape
    counts = torch.bincount(labels, minlength=classes).to(x)  # [K]
    means = torch.zeros(classes, f, dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    means /= counts.clamp_min(1.0)[:, None]  # [K, F]
    centred = x - means[labels]  # [N, F]
    dof = max(n - int((counts > 0).sum()), 1)
    a = shrinkage * float(centred.pow(2).sum()) / dof / f  # l tr(C) / F
    c = (1.0 - shrinkage) / dof
    if f <= n:
        cov = c * centred.T @ centred + a * torch.eye(f, dtype=x.dtype, device=x.device)  # [F, F]
        weight = torch.linalg.solve(cov, means.T).T  # [K, F]
    elif c == 0.0:
        weight = means / a
    else:
        gram = centred @ centred.T + (a / c) * torch.eye(n, dtype=x.dtype, device=x.device)  # [N, N]
        weight = (means - torch.linalg.solve(gram, centred @ means.T).T @ centred) / a  # [K, F]
    prior = (counts + 1.0) / (n + classes)
    bias = -0.5 * (weight * means).sum(dim=1) + prior.log()
    return weight.to(inputs.dtype), bias.to(inputs.dtype)
