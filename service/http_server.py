"""How ``s3router serve`` runs uvicorn: keep-alive, the connection limit and the header timeout from the
settings, in uvicorn's HTTP protocol (h11), whose own answers (400 to a malformed request, 503 past the
connection limit, 408 to a head that never completes) come in the service's error body."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import h11
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import error_body
from service.settings import ServiceSettings


class ServiceH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with the service's answers where uvicorn has its own:

    - a request it cannot parse gets a 400 in the service's error body, not plain text;
    - past ``max_connections`` open connections (or requests in flight), a request gets a 503 in the error
      body with ``Retry-After``, not a bare ``Service Unavailable`` (uvicorn's ``limit_concurrency`` stays
      off: this class applies the bound);
    - a connection that sends no complete request line and headers within ``header_timeout_s`` of opening,
      or of its last answer, is closed (with a 408 if it sent part of one): idle or trickling sockets
      cannot hold the connection limit.

    :func:`protocol_for` makes the subclass that carries a server's two settings."""

    max_connections: int | None = None
    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._service_app = self.app
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        limit = self.max_connections
        over = limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit)
        self.app = _busy_app(limit or 0) if over else self._service_app  # the app of the cycle a head starts
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle or self.transport.get_protocol() is not self:  # a head came (or an upgrade)
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head has the same time

    def send_400_response(self, msg: str) -> None:
        self._send_error(400, b"Bad Request", error_body("MalformedHTTPRequest", msg))

    def _send_error(self, status: int, reason: bytes, body_json: dict[str, Any]) -> None:
        body = json.dumps(body_json).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=status, headers=headers, reason=reason), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        cycle = self.cycle
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_late, cycle)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self, cycle: object) -> None:
        self._head_timer = None
        if self.cycle is not cycle or self.transport.is_closing():
            return  # a request started meanwhile
        if self.conn.trailing_data[0]:  # part of a head came
            message = f"no complete request line and headers within {self.header_timeout_s:g} s"
            self._send_error(408, b"Request Timeout", error_body("RequestHeaderTimeout", message))
        else:
            self.transport.close()  # nothing sent: an idle socket


def _busy_app(limit: int) -> Callable[..., Awaitable[None]]:
    """The answer to a request past the connection limit: 503, the error body, ``Retry-After``."""

    async def busy(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        body = json.dumps(error_body("OverloadedError", f"the server has {limit} connections open; retry "
                                                        "shortly")).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    return busy


def protocol_for(settings: ServiceSettings) -> type[ServiceH11Protocol]:
    """:class:`ServiceH11Protocol` with ``settings``' connection limit and header timeout."""
    return type("ServiceH11Protocol", (ServiceH11Protocol,),
                {"max_connections": settings.max_connections, "header_timeout_s": settings.header_timeout_s})


# a query parameter that looks like a credential (refused as one, but a client may still send it)
_CREDENTIAL_PARAM = re.compile(r"([?&](?:api[_-]?key|key|token|access[_-]?token|secret|password)=)[^&\s\"]*", re.I)


class RedactCredentials(logging.Filter):
    """Replaces credential-like query values in uvicorn's logged paths (access lines, WebSocket handshakes)
    with ``***``: a key sent in the URL is refused, and must not be written to the log either."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_CREDENTIAL_PARAM.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def _log_config() -> dict[str, Any]:
    """uvicorn's own logging set-up, with :class:`RedactCredentials` on both of its handlers."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_credentials"] = {"()": RedactCredentials}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact_credentials"]
    return config


def raise_open_file_limit(connections: int) -> None:
    """Let the process hold ``connections`` sockets (plus files and pipes): the soft limit on open files is
    raised toward the hard one, with a warning when even that is too low."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + 256
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(hard, need)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < need:
            logging.getLogger(__name__).warning(
                "open files are limited to %d: fewer than S3R_MAX_CONNECTIONS=%d connections fit", target, connections)


def uvicorn_options(settings: ServiceSettings) -> dict[str, Any]:
    """``uvicorn.run``/``uvicorn.Config`` arguments for ``settings`` (besides the app, host and port)."""
    return {
        "log_level": settings.log_level,
        "log_config": _log_config(),
        "timeout_keep_alive": max(1, round(settings.keep_alive_s)),
        "http": protocol_for(settings),  # the connection limit and the header timeout
    }
