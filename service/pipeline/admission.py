"""Admission: the one step every request and stream passes before any work is done for it.

It decides, in this order: the API key the caller presents (401) and its rate (429), readiness (503),
room in the queue (503 + Retry-After, HTTP only: a stream's items wait for room), and the deadline. The
:class:`Admission` it returns carries what later steps keep to: the key's mask rights (403 for any mask
the key may not use, on every path: a segment, a ``lang=auto`` candidate, a stream's final), the
deadline, and a "client gone" callable. HTTP routes take it as a FastAPI dependency (:data:`Admitted`,
:data:`KeyAdmitted`); the WebSocket route calls :func:`admit` with the same rules.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Annotated

from fastapi import Depends, Request

from service.pipeline.api_keys import ApiKey
from service.pipeline.state import AppState, state_of

Gone = Callable[[], Awaitable[bool]]  # whether the client went away (its work is then dropped)


async def never_gone() -> bool:
    """A client whose leaving shows elsewhere (a WebSocket's receive loop)."""
    return False


@dataclass
class Admission:
    """One admitted request or stream: its key (``None`` when the service has no keys), the deadline of
    its answer (``time.monotonic()`` seconds) and how to tell that its client left."""

    state: AppState
    key: ApiKey | None
    deadline: float
    gone: Gone = never_gone
    admitted_at: float = field(default_factory=time.monotonic)
    mask: str = ""  # the mask it asked for (the requests metric's label)

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key is not None else None

    def may_use(self, mask: str) -> bool:
        """Whether the key may use ``mask``: every mask without keys, or for a key without a mask list."""
        return self.key is None or self.key.may_use(mask)

    def require(self, mask: str) -> None:
        """:class:`~router_core.errors.MaskForbiddenError` (403) unless the key may use ``mask``."""
        if self.key is not None and self.state.api_keys is not None:
            self.state.api_keys.allow_mask(self.key, mask)

    def extend(self, seconds: float) -> None:
        """A later deadline (a long recording gets more time per second of audio)."""
        self.deadline += seconds

    def renewed(self) -> Admission:
        """The same caller with a fresh deadline: each step of a stream has the time of one request."""
        return replace(self, deadline=time.monotonic() + self.state.settings.request_timeout_s,
                       admitted_at=time.monotonic())


def admit(state: AppState, authorization: str | None, gone: Gone = never_gone, *, queue: bool = True,
          record: Callable[[Admission], None] = lambda _: None) -> Admission:
    """Admit a caller presenting ``authorization`` (an ``Authorization`` header value, or ``None``).
    ``record(admission)`` runs as soon as the key is known, before its rate is charged, so a refused request
    still counts as its key's. ``queue``: also require readiness and room in the queue (a request about to
    read and decode an upload); ``False`` for a stream (its items wait for room) or a listing."""
    key = state.api_keys.authenticate(authorization) if state.api_keys is not None else None
    admission = Admission(state, key, time.monotonic() + state.settings.request_timeout_s, gone)
    record(admission)
    if key is not None and state.api_keys is not None:
        state.api_keys.admit(key)  # 429 over the key's rate
    if queue:
        _, batcher = state.ready_engine()
        batcher.check_room()  # 503 + Retry-After before the body is read or decoded
    return admission


def _admit_http(request: Request, queue: bool) -> Admission:
    def remember(admission: Admission) -> None:
        request.state.admission = admission

    return admit(state_of(request), request.headers.get("authorization"), request.is_disconnected,
                 queue=queue, record=remember)


async def admitted(request: Request) -> Admission:
    """FastAPI dependency of the speech endpoints: :func:`admit` with readiness and queue room."""
    return _admit_http(request, queue=True)


async def key_admitted(request: Request) -> Admission:
    """FastAPI dependency of listings: the key and its rate only."""
    return _admit_http(request, queue=False)


Admitted = Annotated[Admission, Depends(admitted)]
KeyAdmitted = Annotated[Admission, Depends(key_admitted)]
