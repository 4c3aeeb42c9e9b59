"""How ``s3router serve`` runs uvicorn: keep-alive and connection limits from the settings, and uvicorn's
HTTP protocol (h11) with its one answer that never reaches the app, the 400 to a malformed request, in
the service's error body instead of plain text."""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import Any

import h11
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import error_body
from service.settings import ServiceSettings


class JSONErrorH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering requests it cannot parse with ``{"error": {"type", "message"}}``."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(error_body("MalformedHTTPRequest", msg)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


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


def uvicorn_options(settings: ServiceSettings) -> dict[str, Any]:
    """``uvicorn.run``/``uvicorn.Config`` arguments for ``settings`` (besides the app, host and port)."""
    return {
        "log_level": settings.log_level,
        "log_config": _log_config(),
        "timeout_keep_alive": max(1, round(settings.keep_alive_s)),
        "limit_concurrency": settings.max_connections,
        "http": JSONErrorH11Protocol,
    }
