"""Admission: the API key a request or a stream presents, charged to its rate, and the masks that key may
use. One rule for HTTP, server-sent events and WebSocket streams; the routes only call it."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from service.pipeline.api_keys import ApiKey
from service.pipeline.state import AppState


def admit_key(state: AppState, authorization: str | None,
              known: Callable[[ApiKey], None] = lambda _: None) -> ApiKey | None:
    """The key ``authorization`` (an ``Authorization`` header) presents, taken from its rate limit; ``None``
    when the service has no keys. 401 for a missing or unknown key, 429 over the key's rate. ``known(key)``
    runs once the key is known, before its rate is checked (a refused request still counts as the key's)."""
    if state.api_keys is None:
        return None
    key = state.api_keys.authenticate(authorization)
    known(key)
    state.api_keys.admit(key)
    return key


def admit_request(request: Request, state: AppState) -> ApiKey | None:
    """:func:`admit_key` for an HTTP request, remembered on it for its mask checks and the by-key metrics."""

    def remember(key: ApiKey) -> None:
        request.state.api_key = key
        request.state.api_key_id = key.id  # metrics count by this ID

    return admit_key(state, request.headers.get("authorization"), remember)


def may_use(state: AppState, key: ApiKey | None) -> Callable[[str], bool]:
    """Whether ``key`` may use a mask: every mask without keys, or for a key without a list
    (:func:`require_mask_right` is its refusal)."""
    if key is None or state.api_keys is None or key.masks is None:
        return lambda _: True
    masks = key.masks
    return lambda mask: mask in masks


def require_mask_right(state: AppState, key: ApiKey | None, mask: str) -> None:
    """:class:`MaskForbiddenError` (403) unless ``key`` may use ``mask``."""
    if key is not None and state.api_keys is not None:
        state.api_keys.allow_mask(key, mask)
