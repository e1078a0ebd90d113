"""Limits and safety of ``ragr serve``: request size, document count, text length, the API key, and
error answers that name the field or limit at fault (never a 500 for a bad request).

Every error body is ``{"message": ..., "error": {"message", "type", "param", "code"}}``: the Cohere
clients read ``message``, the OpenAI clients read ``error``.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from ragr.errors import UserError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         413: "request_too_large", 422: "invalid_request_error", 499: "client_closed_request", 500: "server_error",
         503: "service_unavailable"}


@dataclass
class ServeSettings:
    """What ``ragr serve`` allows (the CLI flags of the same names).

    Args:
        api_key: when set, every API call needs ``Authorization: Bearer <api_key>`` (``/health`` and the
            OpenAPI page stay open).
        max_batch_tokens: token budget of one forward pass, shared by concurrent requests.
        batch_size: most pairs (or texts) in one forward pass.
        max_documents: most documents (rerank) or inputs (embeddings) in one request.
        max_text_length: most characters in one query, document or input.
        max_request_bytes: largest request body.
    """

    api_key: str | None = None
    max_batch_tokens: int = 16384
    batch_size: int = 32
    max_documents: int = 1000
    max_text_length: int = 100_000
    max_request_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "batch_size", "max_documents", "max_text_length", "max_request_bytes"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("--api-key must not be empty")


class ApiError(Exception):
    """An error answer: HTTP ``status`` with ``message``, naming the request field ``param`` if any."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def error_body(status: int, message: str, param: str | None = None, code: Any = None) -> dict[str, Any]:
    return {"message": message,
            "error": {"message": message, "type": TYPES.get(status, "error"), "param": param, "code": code}}


def _field(loc: tuple | list) -> str:
    """``("body", "documents", 3, "text")`` -> ``documents[3].text``."""
    out = ""
    for part in list(loc)[1:] if loc and loc[0] == "body" else list(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[str]", "list[int]", "list[list[int]]", "TextDocument", "function-after"):
            continue  # union branch names pydantic adds to the location
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def validation_message(errors: list[dict[str, Any]]) -> tuple[int, str, str | None]:
    """(status, message, first field) of a FastAPI RequestValidationError's errors."""
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "")
            return 400, f"invalid JSON body{f' ({reason})' if reason else ''}", None
    seen: dict[str, str] = {}
    for err in errors:
        name = _field(err.get("loc", ()))
        msg = "field required" if err.get("type") == "missing" else err.get("msg", "invalid")
        seen.setdefault(name, msg)
    parts = [f"{k}: {v}" for k, v in list(seen.items())[:5]]
    return 422, "; ".join(parts), next(iter(seen), None)


def install_error_handlers(app: Any) -> None:
    """Answer ApiError, validation errors, HTTP errors and unexpected errors in the shared error body."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    from ragr.serve.batching import ShuttingDown

    async def api_error(request, exc: ApiError):
        return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code), status_code=exc.status,
                            headers=exc.headers)

    async def invalid(request, exc: RequestValidationError):
        status, message, param = validation_message(list(exc.errors()))
        return JSONResponse(error_body(status, message, param), status_code=status)

    async def http_error(request, exc: HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def gone(request, exc: ClientGone):
        return Response(status_code=499)

    async def shutting_down(request, exc: ShuttingDown):
        return JSONResponse(error_body(503, str(exc)), status_code=503)

    async def unexpected(request, exc: Exception):
        return JSONResponse(error_body(500, f"internal error: {type(exc).__name__}: {exc}"), status_code=500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientGone, gone)
    app.add_exception_handler(ShuttingDown, shutting_down)
    app.add_exception_handler(Exception, unexpected)


class BodyLimitMiddleware:
    """ASGI middleware: answer 413 to a body over ``max_bytes`` (by Content-Length, or while reading a
    chunked body) before anything parses it; the app then reads the buffered body as usual."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, send: Any) -> None:
        body = json.dumps(error_body(413, f"request body is larger than {self.max_bytes} bytes (--max-request-bytes)",
                                     code="max_request_bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    if int(value) > self.max_bytes:
                        await self._reject(send)
                        return
                except ValueError:
                    pass
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: blocks until the client disconnects

        await self.app(scope, replay, send)


def api_key_dependency(api_key: str | None):
    """A FastAPI dependency: 401 unless ``Authorization: Bearer <api_key>`` (no check when None)."""
    from fastapi import Depends
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    bearer = HTTPBearer(auto_error=False, description="The key given to `ragr serve --api-key`.")

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if api_key is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
            reason = "wrong API key" if given else "missing API key"
            raise ApiError(401, f"{reason}: send the header 'Authorization: Bearer <key>' with the key given to --api-key",
                           code="unauthorized", headers={"WWW-Authenticate": "Bearer"})

    return check


def check_texts(texts: list[str], field: str, settings: ServeSettings, count: bool = True) -> None:
    """400 naming the limit when ``texts`` are too many (--max-documents) or one is too long (--max-text-length)."""
    if count and len(texts) > settings.max_documents:
        raise ApiError(400, f"{field}: {len(texts)} items, more than the limit of {settings.max_documents} (--max-documents)",
                       param=field, code="max_documents")
    for i, text in enumerate(texts):
        if len(text) > settings.max_text_length:
            where = f"{field}[{i}]" if count else field
            raise ApiError(400, f"{where}: {len(text)} characters, more than the limit of {settings.max_text_length} "
                           "(--max-text-length)", param=field, code="max_text_length")
