"""Who may call: bearer tokens checked in constant time, before any route runs.

``DAGNATS_API_TOKEN`` guards every route but ``/health`` and ``/ready``; the
HTTP-worker bridge (``/v1/``) takes ``DAGNATS_BRIDGE_TOKEN`` instead. Trigger
endpoints (``/hooks/``, ``/api/``) are called by other systems and prove
themselves with the trigger's own HMAC signature. The console (a browser
cannot send a header on a link) may carry the API token in its session
cookie, set by ``/console/login``. With no token set, loopback is the
protection: serve binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from typing import Any

from .endpoints import encode

SESSION_COOKIE = "dagnats_session"
OPEN_PATHS = ("/health", "/ready", "/console/login", "/console/static/")
SIGNED_PREFIXES = ("/hooks/", "/api/")


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class Guard:
    """ASGI middleware: 401 with a JSON body unless the request carries the right token."""

    def __init__(self, app: Any, api_token: str | None, bridge_token: str | None) -> None:
        self.app, self.api_token, self.bridge_token = app, api_token or None, bridge_token or None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            await _unauthorized(send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: dict[str, Any]) -> bool:
        path: str = scope["path"]
        if path in OPEN_PATHS or path.startswith(OPEN_PATHS[-1]) or path.startswith(SIGNED_PREFIXES):
            return True
        token = self.bridge_token if path.startswith("/v1/") else self.api_token
        if token is None:
            return True
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, value = given.partition(" ")
        if scheme.lower() == "bearer" and same_secret(value.strip(), token):
            return True
        if path.startswith("/console") and token is self.api_token:
            cookie = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
            session = cookie.get(SESSION_COOKIE)
            return session is not None and same_secret(session.value, token)
        return False


async def _unauthorized(send: Any) -> None:
    body = encode({"error": "unauthorized", "message": "missing or wrong bearer token (Authorization: Bearer ...)"})
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="dagnats"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
