"""What the web server does to every request and response before its routes see them, as one ASGI middleware:
security headers on every response, `HEAD` wherever `GET` works, and a cap on request bodies checked before any
parsing.

The page's Content-Security-Policy allows only its own origin. Two directives stay looser than that, and why:
`script-src 'unsafe-eval'`, because Vega compiles chart expressions with `Function` (its CSP-safe interpreter is
not in the bundle vl-convert builds), and `style-src 'unsafe-inline'`, because Vega-Embed and its tooltip add
`<style>` elements and the SVG renderer writes `style` attributes. `img-src` and `connect-src` also take `data:`
(and images `blob:`): a chart's PNG download is an image URL the page fetches as a blob. The API docs (Swagger UI, ReDoc) start from an
inline script, so their pages alone also get `script-src 'unsafe-inline'`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

MAX_BODY_BYTES = 256 << 10
"""The largest request body accepted (256 KiB), checked before it is parsed: room for a comparison of the most
runs, each with the longest text, even when every character is sent as a JSON escaped surrogate pair."""

_POLICY = (
    "default-src 'self'",
    "script-src 'self' 'unsafe-eval'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "connect-src 'self' data:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)
CSP = "; ".join(_POLICY)
"""The Content-Security-Policy of every response but the API docs' pages."""
DOCS_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'")
"""The API docs' pages (/docs, /redoc), which start Swagger UI and ReDoc from an inline script."""
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Guard:
    """ASGI middleware: security headers, HEAD as GET without the body, and 413 for a body over `max_body`."""

    def __init__(self, app: App, max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = DOCS_CSP if scope["path"] in DOCS_PATHS else CSP
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode("latin-1").lower() not in HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                headers.append((b"content-security-policy", policy.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and head:
                message = {**message, "body": b""}
            await send(message)

        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await self._too_large(send_guarded)
            return
        if declared is None and scope["method"] in {"POST", "PUT", "PATCH"}:
            body = await self._read_capped(receive)
            if body is None:
                await self._too_large(send_guarded)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send_guarded)

    async def _read_capped(self, receive: Receive) -> bytes | None:
        """A chunked body read whole, or None as soon as it passes the cap."""
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(parts)

    async def _too_large(self, send: Send) -> None:
        body = f'{{"detail": "request body is over {self.max_body} bytes, the most this server accepts"}}'.encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, then: Receive) -> Receive:
    """A `receive` that hands the app a body already read, then the connection's own messages (its disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await then()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
