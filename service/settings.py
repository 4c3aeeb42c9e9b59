"""The service's one settings object: ``S3R_*`` environment variables, same names as ``s3router serve`` flags."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    redis_prefix: str = Field(default="s3router:", description="key prefix of the masks in Redis")
    device: str = Field(default="cpu", description="torch device: cpu, cuda, cuda:1, ...")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    kernel: Literal["auto", "reference", "cpu", "triton"] = "auto"
    decoder: Literal["auto", "greedy"] = Field(
        default="auto", description="auto: beam search with a mask's language model when it has one; greedy: never"
    )
    offline: bool = Field(default=True, description="never contact a model hub")
    model_id: str = Field(default="s3router", description="model id reported to OpenAI-compatible clients")
    language_mask: str = Field(default="language", description="classification mask used for lang=auto")

    max_batch_size: int = Field(default=8, ge=1, le=256)
    max_wait_ms: float = Field(default=10.0, ge=0.0, le=10_000.0)
    max_queue: int = Field(default=64, ge=1, le=100_000)
    request_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    mask_budget_mb: float = Field(default=512.0, gt=0.0)

    max_upload_bytes: int = Field(default=25 * 2**20, ge=1024)
    max_audio_seconds: float = Field(default=120.0, gt=0.0)

    admin_token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

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

    @model_validator(mode="after")
    def _token_not_empty(self) -> ServiceSettings:
        if self.admin_token is not None and len(self.admin_token.get_secret_value()) < 8:
            raise ValueError("admin_token must be at least 8 characters (or unset to disable admin endpoints)")
        return self


def load_settings(**overrides: object) -> ServiceSettings:
    """Build the settings from the environment, with explicit overrides (CLI flags) on top."""
    return ServiceSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
