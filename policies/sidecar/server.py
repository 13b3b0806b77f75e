"""The sidecar's HTTP endpoints (stdlib ``ThreadingHTTPServer``).

====================  =======================================================================
``GET /v1/decision``  the last decision: knobs, mode, reason, guardrail interventions,
                      observation summary, problems (503 before the first); an elastic
                      policy's ``desired_replicas`` per pool
``GET /metrics``      the sidecar's Prometheus metrics (with the desired replicas per pool as
                      ``budgetpilot_sidecar_desired_replicas{pool,deployment}``)
``GET /healthz``      200 while the decision loop is alive
``GET /readyz``       200 once a decision was published on fresh metrics, else 503 and why
``POST /v1/kill``     ``{"engaged": true|false, "reason": "..."}``: the kill switch
``POST /v1/shadow``   ``{"enabled": true|false}``: shadow mode
====================  =======================================================================

POST endpoints require ``Authorization: Bearer <token>`` whenever a token is configured (which
binding beyond loopback requires).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from policies.sidecar.loop import Sidecar

log = logging.getLogger("budgetpilot.sidecar.http")
MAX_BODY_BYTES = 64 * 1024


class SidecarServer(ThreadingHTTPServer):
    """Serves one sidecar.

    Parameters
    ----------
    sidecar:
        The sidecar whose decisions and switches are served.
    token:
        Required bearer token of the POST endpoints (``None``: none required).
    loop_alive:
        Whether the decision loop runs (for ``/healthz``).
    """

    daemon_threads = True

    def __init__(
        self,
        sidecar: Sidecar,
        token: str | None = None,
        loop_alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self.sidecar = sidecar
        self.token = token
        self.loop_alive = loop_alive
        super().__init__((sidecar.config.host, sidecar.config.port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: SidecarServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    # -- GET -----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        routes = {
            "/v1/decision": self._decision,
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }
        route = routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})
            return
        route()

    def _decision(self) -> None:
        sidecar = self.server.sidecar
        decision = sidecar.last_decision
        if decision is None:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no decision yet"})
            return
        self._json(HTTPStatus.OK, decision.to_dict(sidecar))

    def _metrics(self) -> None:
        self._send(HTTPStatus.OK, self.server.sidecar.metrics.render(), CONTENT_TYPE_LATEST)

    def _healthz(self) -> None:
        alive = self.server.loop_alive()
        status = HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE
        self._json(status, {"alive": alive})

    def _readyz(self) -> None:
        sidecar = self.server.sidecar
        decision = sidecar.last_decision
        if decision is None:
            problem = "no decision yet"
        elif decision.mode in ("hold", "fallback"):
            problem = f"deciding in {decision.mode} mode: {decision.reason}"
        else:
            problem = None
        status = HTTPStatus.OK if problem is None else HTTPStatus.SERVICE_UNAVAILABLE
        self._json(status, {"ready": problem is None, "problem": problem})

    # -- POST ----------------------------------------------------------------------------------

    def do_POST(self) -> None:
        routes = {"/v1/kill": self._kill, "/v1/shadow": self._shadow}
        route = routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {self.path}"})
            return
        if not self._authorised():
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
            return
        body = self._body()
        if body is not None:
            route(body)

    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def _body(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "missing or oversized body"})
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "the body must be a JSON object"})
            return None
        return body

    def _kill(self, body: dict[str, Any]) -> None:
        engaged = body.get("engaged")
        if not isinstance(engaged, bool):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "field 'engaged' must be true or false"})
            return
        reason = str(body.get("reason", ""))[:200]
        self.server.sidecar.set_kill_switch(
            engaged, reason or f"via HTTP from {self.client_address[0]}"
        )
        self._json(HTTPStatus.OK, {"kill_switch": engaged})

    def _shadow(self, body: dict[str, Any]) -> None:
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "field 'enabled' must be true or false"})
            return
        self.server.sidecar.set_shadow(enabled)
        self._json(HTTPStatus.OK, {"shadow": enabled})

    # -- responses -----------------------------------------------------------------------------

    def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body, allow_nan=False).encode()
        self._send(status, data, "application/json")

    def _send(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
