"""API keys for the inference endpoints (``/transcribe``, ``/classify``, ``/v1/*``), sent as OpenAI clients
send them: ``Authorization: Bearer KEY``. ``/healthz``, ``/readyz`` and ``/metrics`` stay open.

``S3R_API_KEYS`` holds entries separated by commas or newlines, or ``@/path/to/file`` with one entry a line
(``#`` starts a comment). An entry is ``ID:KEY``, then optional ``:rps=N`` (requests per second, a token
bucket holding ``max(1, N)``) and ``:masks=fr|de|language`` (the masks the key may use, the language-ID
mask included for ``lang=auto``). The ID names the key in metrics and logs; the key itself never appears.
"""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from router_core.errors import AuthenticationError, MaskForbiddenError, RateLimitedError


@dataclass
class ApiKey:
    id: str
    secret: bytes
    rps: float | None = None
    masks: frozenset[str] | None = None  # None: every mask
    _tokens: float = field(default=0.0, repr=False)
    _refilled_at: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def may_use(self, mask: str) -> bool:
        """Whether this key may use ``mask``: any mask without a list of its own."""
        return self.masks is None or mask in self.masks

    def take(self, now: float) -> float:
        """Take one request from the bucket: 0.0 when allowed, else the seconds until one is."""
        if self.rps is None:
            return 0.0
        capacity = max(1.0, self.rps)
        with self._lock:
            if self._refilled_at == 0.0:
                self._tokens, self._refilled_at = capacity, now
            self._tokens = min(capacity, self._tokens + (now - self._refilled_at) * self.rps)
            self._refilled_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rps


def parse_api_keys(spec: str) -> list[ApiKey]:
    """``S3R_API_KEYS`` (or the file it names with ``@``) -> keys; a malformed entry is a ``ValueError``
    (the settings object checks at start-up)."""
    if spec.startswith("@"):
        try:
            spec = Path(spec[1:]).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the API key file {spec[1:]}: {exc.strerror or exc}") from exc
    keys: list[ApiKey] = []
    for raw in spec.replace(",", "\n").splitlines():
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        key_id, _, rest = entry.partition(":")
        secret, *options = rest.split(":")
        if not key_id or len(secret) < 16:
            raise ValueError(f"API key entry {key_id or '?'!r}: use ID:KEY with a KEY of 16+ characters")
        key = ApiKey(key_id, secret.encode())
        for option in options:
            name, _, value = option.partition("=")
            if name == "rps":
                try:
                    key.rps = float(value)
                except ValueError:
                    raise ValueError(f"API key {key_id!r}: rps={value!r} is not a number") from None
                if not key.rps > 0:
                    raise ValueError(f"API key {key_id!r}: rps must be positive")
            elif name == "masks":
                key.masks = frozenset(m for m in value.split("|") if m)
            else:
                raise ValueError(f"API key {key_id!r}: unknown option {name!r} (use rps=N, masks=a|b)")
        keys.append(key)
    if len({k.id for k in keys}) != len(keys):
        raise ValueError("API key IDs must be unique")
    return keys


class ApiKeyChecker:
    """Finds the key a request presents (comparing against every key in constant time), applies its rate
    limit, and later its mask list."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key ``authorization`` presents, or :class:`AuthenticationError` (401). As RFC 7235 allows, the
        scheme is matched without regard to case and ``1*SP`` may separate it from the key; the header
        value's own surrounding whitespace is not part of it."""
        scheme, _, given = (authorization or "").partition(" ")
        presented = given.strip().encode()
        found: ApiKey | None = None
        for key in self.keys:  # no early exit: the time taken does not depend on which key matched
            if hmac.compare_digest(presented, key.secret) and scheme.lower() == "bearer":
                found = key
        if found is None:
            raise AuthenticationError("missing or unknown API key: send Authorization: Bearer <key>")
        return found

    @staticmethod
    def admit(key: ApiKey, now: float | None = None) -> None:
        """Take one request from ``key``'s rate limit, or raise :class:`RateLimitedError` (429)."""
        wait = key.take(time.monotonic() if now is None else now)
        if wait > 0:
            raise RateLimitedError(f"API key {key.id!r} is over its limit of {key.rps:g} requests/s", wait)

    @staticmethod
    def allow_mask(key: ApiKey, mask: str) -> None:
        if not key.may_use(mask):
            raise MaskForbiddenError(f"API key {key.id!r} may not use mask {mask!r}")
