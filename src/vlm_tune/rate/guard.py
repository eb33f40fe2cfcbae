"""The rating server's gate: what a request must satisfy before any handler trusts it.

- Errors: every 4xx is `{"error": "<one line>"}` (ApiError -> error_response).
- Bodies: JSON objects only, `application/json` only (a cross-site form cannot send that without a
  preflight the server never grants), at most MAX_BODY_BYTES, counted while reading (a lying or absent
  Content-Length cannot get more in).
- Password (optional): a cookie set by POST /api/login, or `Authorization: Bearer <password>` for scripts.
  The cookie holds HMAC(salt, password) with a random salt kept in the database, so it survives restarts
  and reveals nothing about the password; comparisons are constant-time.
- Every response carries headers that keep the page from loading anything foreign (CSP 'self').
"""

from __future__ import annotations

import hashlib
import hmac
import json

from fastapi import Request
from fastapi.responses import JSONResponse

MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024  # request line aside: all header names and values together
MAX_URL_BYTES = 4 * 1024
MAX_NAME_CHARS = 64
COOKIE = "vlm_rate_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ApiError(Exception):
    """A request the server refuses: HTTP status + one line for `{"error": ...}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def shown(value) -> str:
    """A client-sent value inside an error message: quoted, short."""
    return json.dumps(value, ensure_ascii=False)[:60] if not isinstance(value, str) else repr(value[:60])


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=SECURITY_HEADERS)


# --- sizes ---


def oversize(scope: dict) -> ApiError | None:
    """The error for a request whose URL or headers are over the limits (uvicorn only bounds headers that
    arrive in pieces), else None."""
    if len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > MAX_URL_BYTES:
        return ApiError(414, f"URL too long (at most {MAX_URL_BYTES} bytes)")
    if sum(len(name) + len(value) for name, value in scope.get("headers", [])) > MAX_HEADER_BYTES:
        return ApiError(431, f"request headers too large (at most {MAX_HEADER_BYTES} bytes)")
    return None


# --- bodies ---


async def read_json(request: Request) -> dict:
    """The request's JSON object, or ApiError (415 wrong type, 413 too large, 400 not a JSON object)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "send the body as Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise ApiError(413, f"body too large (at most {MAX_BODY_BYTES} bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"body too large (at most {MAX_BODY_BYTES} bytes)")
    try:
        data = json.loads(bytes(body).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    return data


def only_fields(body: dict, allowed: tuple[str, ...]) -> None:
    unknown = [key for key in body if key not in allowed]
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(shown(k) for k in unknown)} (allowed: {', '.join(allowed)})")


def rater_name(value) -> str:
    """A rater's name: 1-64 printable characters, surrounding spaces dropped."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ApiError(400, "missing rater")
    if not isinstance(value, str):
        raise ApiError(400, f"rater must be a string, got {shown(value)}")
    name = value.strip()
    if len(name) > MAX_NAME_CHARS:
        raise ApiError(400, f"rater name longer than {MAX_NAME_CHARS} characters")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise ApiError(400, "rater name has control characters")
    return name


def item_id_field(value) -> str:
    if not isinstance(value, str) or not value:
        raise ApiError(400, "missing item_id")
    return value


# --- password ---


def _same(a: str, b: str) -> bool:
    """Constant-time equality of any two strings (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class Gate:
    """Password check for the API and images; with no password every request passes."""

    def __init__(self, password: str | None, salt: str):
        self.salt = salt.encode("utf-8")
        self.token = self._token(password) if password else None

    def _token(self, password: str) -> str:
        return hmac.new(self.salt, password.encode("utf-8"), hashlib.sha256).hexdigest()

    @property
    def required(self) -> bool:
        return self.token is not None

    def accepts(self, password) -> bool:
        return self.token is None or (isinstance(password, str) and _same(self._token(password), self.token))

    def check(self, request: Request) -> None:
        if self.token is None:
            return
        if _same(request.cookies.get(COOKIE, ""), self.token):
            return
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and self.accepts(auth[7:]):
            return
        raise ApiError(401, "password required: log in on the page, or send 'Authorization: Bearer <password>'")
