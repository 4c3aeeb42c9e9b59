"""The service's one settings object: ``S3R_*`` environment variables, same names as ``s3router serve`` flags."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from router_core.language_id import DecodingLanguageId
from router_core.redis_store import DEFAULT_PREFIX

_LID = DecodingLanguageId()  # lang=auto's defaults, fitted on the bundled model
# each field of lang=auto's DecodingLanguageId -> the setting it is served from (variable: S3R_ + name, upper case)
LID_SETTINGS = {"top": "lid_candidates", "confident": "lid_confident", "lm_weight": "lid_lm_weight",
                "length_bonus": "lid_length_bonus", "lid_weight": "lid_weight"}

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "bfloat16": "bfloat16"}


class ServiceSettings(BaseSettings):
    """Everything ``create_app()`` needs. Invalid values fail at start-up with the field named."""

    model_config = SettingsConfigDict(env_prefix="S3R_", extra="forbid", frozen=True)

    backbone: str | None = Field(
        default=None, description="checkpoint folder or hub id; unset = the bundled default model"
    )
    registry: str | None = Field(
        default=None,
        description="mask registry: a folder path or a redis:// URL (credentials, TLS); unset = the bundled masks",
    )
    bundle_dir: str | None = Field(
        default=None,
        description="folder of the bundled default model (backbone/ + registry/); unset = masks/ beside the "
        "source tree (the image sets /app/masks)",
    )
    redis_prefix: str = Field(default=DEFAULT_PREFIX, description="key prefix of the masks in Redis")
    max_mask_bytes: int = Field(default=512 * 2**20, ge=1024, description="largest mask file PUT /masks accepts")
    device: str = Field(default="cpu", description="torch device: cpu, cuda, cuda:1, ...")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description="backbone precision (fp32/fp16 aliases accepted); float16 or bfloat16 on a GPU"
    )
    kernel: Literal["auto", "reference", "cpu", "triton"] = Field(
        default="auto", description="masked-matmul backend; auto: triton on CUDA, the C++ kernel on the CPU"
    )
    kernel_cache_dir: str | None = Field(
        default="~/.cache/s3router",
        description="where kernel choices timed on this machine are kept across restarts; unset: not kept",
    )
    materialized_mask_mb: float = Field(
        default=256.0, ge=0.0,
        description="CPU: memory for masked weights kept dense (dense speed for the masks in use, about one "
        "wav2vec2-base mask in 256 MB); 0: none",
    )
    decoder: Literal["auto", "greedy"] = Field(
        default="auto", description="auto: beam search with a mask's language model when it has one; greedy: never"
    )
    decode_workers: int = Field(
        default=1, ge=0, le=256,
        description="processes running beam searches while the model thread runs the next batch; 0: none",
    )
    vad: bool = Field(
        default=True, description="silero-vad speech gate: audio without speech gets an empty transcript"
    )
    vad_threshold: float = Field(default=0.5, gt=0.0, lt=1.0, description="speech probability a window needs")
    offline: bool = Field(default=True, description="never contact a model hub")
    model_id: str = Field(default="s3router", description="model id reported to OpenAI-compatible clients")
    language_mask: str = Field(default="language", description="classification mask used for lang=auto")
    lid_candidates: int = Field(
        default=_LID.top, ge=1, le=64,
        description="lang=auto: the language-ID mask's best labels transcribed, the best-explained one kept; 1: the "
        "mask alone",
    )
    lid_confident: float = Field(
        default=_LID.confident, gt=0.0, le=1.0,
        description="lang=auto: the language-ID probability at which its answer is taken without trying others "
        "(1.0 suits the bundled LDA-fitted head; 0.99 a softmax-probed one)",
    )
    lid_lm_weight: float = Field(
        default=_LID.lm_weight, ge=0.0, le=100.0,
        description="lang=auto: weight of a candidate transcript's language-model log probability "
        "(`s3router fit-lid` fits every S3R_LID_* setting to your masks)",
    )
    lid_length_bonus: float = Field(
        default=_LID.length_bonus, ge=-100.0, le=100.0,
        description="lang=auto: score added per character of a candidate transcript",
    )
    lid_weight: float = Field(
        default=_LID.lid_weight, ge=0.0, le=100.0,
        description="lang=auto: weight of the language-ID log probability of a candidate",
    )

    max_batch_size: int = Field(default=8, ge=1, le=256, description="most requests in one forward pass")
    max_wait_ms: float = Field(
        default=10.0, ge=0.0, le=10_000.0, description="how long a batch waits to fill before it runs"
    )
    max_queue: int = Field(
        default=64, ge=1, le=100_000, description="requests waiting at most; past it, 503 with Retry-After"
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0.0, le=3600.0, description="a request not answered by then gets a 504"
    )
    upload_timeout_s: float = Field(
        default=30.0, gt=0.0, le=3600.0, description="a request body not fully received by then gets a 408"
    )
    keep_alive_s: float = Field(
        default=5.0, gt=0.0, le=600.0, description="idle HTTP keep-alive connections are closed after this"
    )
    max_connections: int = Field(
        default=1024, ge=1, le=100_000,
        description="open connections at most; past it a request gets a 503 with Retry-After",
    )
    max_queue_wait_s: float = Field(
        default=5.0, gt=0.0, le=3600.0,
        description="a request the queued work would keep waiting longer than this gets a 503 with Retry-After",
    )
    max_batch_audio_s: float | None = Field(
        default=None, gt=0.0,
        description="padded audio seconds in one batch at most (a short clip waits for at most one such batch); "
                    "unset: 30 on a CPU, no bound on a GPU",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0.0, le=600.0,
        description="a connection that sends no complete request line and headers in this time is closed",
    )
    mask_budget_mb: float = Field(default=512.0, gt=0.0, description="memory for resident masks (LRU beyond it)")

    max_upload_bytes: int = Field(default=25 * 2**20, ge=1024, description="largest request body; larger is a 413")
    max_audio_seconds: float = Field(
        default=120.0, gt=0.0, description="longest clip to classify; longer: 413 (transcription: max_longform_seconds)"
    )
    def language_picker(self) -> DecodingLanguageId:
        """How ``lang=auto`` decides (:mod:`router_core.language_id`) with these settings: the service and
        ``s3router eval --decide`` alike."""
        return DecodingLanguageId(**{field: getattr(self, name) for field, name in LID_SETTINGS.items()})

    @property
    def segment_seconds(self) -> float:
        """The longest segment actually used: never over ``max_audio_seconds`` (what kernels are prepared for)."""
        return min(self.segment_max_s, self.max_audio_seconds)

    max_longform_seconds: float = Field(
        default=10_800.0, gt=0.0, description="longest recording to transcribe (cut into speech segments); longer: 413"
    )
    segment_max_s: float = Field(
        default=25.0, ge=2.0, le=120.0, description="longest speech segment; longer speech is cut where it is quietest"
    )
    segment_min_silence_s: float = Field(default=0.3, gt=0.0, le=10.0, description="a pause this long ends a segment")
    segment_pad_s: float = Field(default=0.2, ge=0.0, le=2.0, description="audio kept on each side of a segment")
    max_streams: int = Field(default=32, ge=1, le=10_000, description="open WebSocket streams at most; more: 1013")
    stream_idle_s: float = Field(default=30.0, gt=0.0, le=3600.0, description="a stream silent this long is closed")
    stream_partial_interval_s: float = Field(
        default=1.0, gt=0.0, le=60.0, description="audio between two partial results of a stream's open segment"
    )
    stream_max_speed: float = Field(
        default=20.0, gt=0.0, description="a stream sending audio faster than this many times real time is closed"
    )
    longform_seconds_per_audio_second: float = Field(
        default=0.5, gt=0.0, le=100.0,
        description="extra time a long recording may take, per second of audio, beyond request_timeout_s",
    )

    admin_token: SecretStr | None = Field(
        default=None, description="bearer token for PUT/DELETE /masks (8+ characters); unset = admin off (403)"
    )
    api_keys: SecretStr | None = Field(
        default=None,
        description="keys for /transcribe, /classify, /v1/*: ID:KEY[:rps=N][:masks=a|b], comma-separated, or "
        "@FILE with one a line; unset = open",
    )
    host: str = Field(default="127.0.0.1", description="address `s3router serve` listens on")
    port: int = Field(default=8000, ge=0, le=65535, description="port `s3router serve` listens on")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log verbosity")

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_alias(cls, value: object) -> object:
        return DTYPES.get(str(value).lower(), value) if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _device_is_torch_device(cls, value: str) -> str:
        import torch

        try:
            torch.device(value)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"not a torch device: {value!r}") from exc
        return value

    @field_validator("admin_token", "api_keys", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``S3R_ADMIN_TOKEN=`` (as in .env.example) means unset, not an empty secret."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_keys")
    @classmethod
    def _api_keys_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from service.pipeline.api_keys import parse_api_keys

            if not parse_api_keys(value.get_secret_value()):
                raise ValueError("api_keys names no key (unset it to leave the endpoints open)")
        return value

    @model_validator(mode="after")
    def _token_not_empty(self) -> ServiceSettings:
        if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 8:
            raise ValueError("admin_token must be at least 8 characters (or unset to disable admin endpoints)")
        return self


def settings_table() -> str:
    """The Markdown table of every setting (variable, default, meaning) that README.md embeds."""
    prefix = ServiceSettings.model_config.get("env_prefix", "")
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in ServiceSettings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        rows.append(f"| `{prefix}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"


def load_settings(**overrides: object) -> ServiceSettings:
    """Build the settings from the environment, with explicit overrides (CLI flags) on top."""
    return ServiceSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
