"""Security headers on every response (issue 12, item 8), as one pure-ASGI middleware.

Every response: `X-Content-Type-Options: nosniff`. HTML (the sign-in and approval pages): a
Content-Security-Policy that allows nothing but their own inline stylesheet (by hash: the pages run
no script), no framing (`frame-ancestors 'none'` and `X-Frame-Options: DENY`, against
clickjacking of the approval button) and no Referer. With `hsts_seconds`, responses on https carry
Strict-Transport-Security.
"""

from __future__ import annotations

NOSNIFF = (b"x-content-type-options", b"nosniff")


def html_headers(style_hash: str) -> list[tuple[bytes, bytes]]:
    csp = (f"default-src 'none'; style-src '{style_hash}'; img-src 'self'; frame-ancestors 'none'; "
           "base-uri 'none'").encode()
    return [(b"content-security-policy", csp), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]


class SecurityHeadersMiddleware:
    def __init__(self, app, *, style_hash: str, hsts_seconds: int = 0, https_base: bool = False) -> None:
        self.app = app
        self.html = html_headers(style_hash)
        self.hsts = (b"strict-transport-security", f"max-age={hsts_seconds}".encode()) if hsts_seconds else None
        self.https_base = https_base

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secure = scope.get("scheme") == "https" or self.https_base

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append(NOSNIFF)
                ctype = next((v for n, v in headers if n.lower() == b"content-type"), b"")
                if ctype.startswith(b"text/html"):
                    headers += [h for h in self.html if h[0] not in names]
                if self.hsts is not None and secure:
                    headers.append(self.hsts)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_wrapper)


class HostGuardMiddleware:
    """Without a configured public base URL, the published issuer, endpoints and links come from the
    request's Host header: only hosts on the allow-list may then be served (400 otherwise), so a
    client cannot make discovery publish `http://evil.example/auth/authorize`."""

    def __init__(self, app, *, allowed: list[str]) -> None:
        self.app = app
        self.allowed = {h.strip().lower().strip("[]") for h in allowed if h.strip()}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for n, v in scope["headers"] if n == b"host"), "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name.lower().strip("[]") in self.allowed:
            await self.app(scope, receive, send)
            return
        fhir = scope.get("path", "").startswith("/fhir")
        body = (b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"security",'
                b'"diagnostics":"this Host is not served (set FHIR_PUBLIC_BASE_URL or FHIR_ALLOWED_HOSTS)"}]}'
                if fhir else b'{"error":"invalid_request","error_description":"this Host is not served"}')
        await send({"type": "http.response.start", "status": 400, "headers": [
            (b"content-type", b"application/fhir+json" if fhir else b"application/json"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
