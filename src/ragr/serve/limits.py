"""Limits and safety of ``ragr serve``: request size, document count, text length, the API key, and
error answers that name the field or limit at fault (never a 500 for a bad request).

Every error body is ``{"message": ..., "error": {"message", "type", "param", "code"}}``: the Cohere
clients read ``message``, the OpenAI clients read ``error``. A 5xx body never carries internal text
(exception messages, paths): an unexpected error answers a generic message with a request id, and the
traceback goes to the server log under that id.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from ragr.errors import UserError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         413: "request_too_large", 422: "invalid_request_error", 499: "client_closed_request", 500: "server_error",
         503: "service_unavailable"}

#: Where unexpected errors are logged (uvicorn's error log, so ``--log-level`` governs it).
log = logging.getLogger("uvicorn.error")

#: A body over the limit is still read (and discarded) up to this many bytes, for at most
#: DRAIN_SECONDS, before the 413 is completed and the connection closed: closing a socket with unread
#: data makes the kernel send a reset, which many clients report instead of the 413.
DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 10.0


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
        max_queue: most requests waiting per model; past it a request is refused at once with 503 and
            ``Retry-After``.
    """

    api_key: str | None = None
    max_batch_tokens: int = 16384
    batch_size: int = 32
    max_documents: int = 1000
    max_text_length: int = 100_000
    max_request_bytes: int = 8 * 1024 * 1024
    max_queue: int = 256

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "batch_size", "max_documents", "max_text_length", "max_request_bytes",
                     "max_queue"):
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


def internal_error_body(request_id: str) -> dict[str, Any]:
    """The body of every unexpected error: a generic message and the id the server log has it under."""
    return error_body(500, f"internal server error (request id {request_id}); the server log has the details",
                      code="internal_error")


def install_error_handlers(app: Any) -> None:
    """Answer ApiError, validation errors, HTTP errors, a full queue and unexpected errors in the shared
    error body (unexpected ones through :class:`InternalErrorMiddleware`, installed here too)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    from ragr.serve.batching import QueueFull, ShuttingDown

    async def api_error(request, exc: ApiError):
        return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code), status_code=exc.status,
                            headers=exc.headers)

    async def invalid(request, exc: RequestValidationError):
        status, message, param = validation_message(list(exc.errors()))
        return JSONResponse(error_body(status, message, param), status_code=status)

    async def http_error(request, exc: HTTPException):
        if exc.status_code >= 500:  # Starlette's own 5xx: no detail to clients
            message = "internal server error" if exc.status_code == 500 else "service unavailable"
        else:
            message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def gone(request, exc: ClientGone):
        return Response(status_code=499)

    async def shutting_down(request, exc: ShuttingDown):
        return JSONResponse(error_body(503, "the server is shutting down", code="shutting_down"), status_code=503,
                            headers={"Retry-After": "1"})

    async def queue_full(request, exc: QueueFull):
        return JSONResponse(error_body(503, str(exc), param="model", code="queue_full"), status_code=503,
                            headers={"Retry-After": str(exc.retry_after)})

    async def unexpected(request, exc: Exception):  # fallback: InternalErrorMiddleware answers first
        return JSONResponse(internal_error_body(uuid.uuid4().hex), status_code=500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientGone, gone)
    app.add_exception_handler(ShuttingDown, shutting_down)
    app.add_exception_handler(QueueFull, queue_full)
    app.add_exception_handler(Exception, unexpected)
    app.add_middleware(InternalErrorMiddleware)


class InternalErrorMiddleware:
    """ASGI middleware: an exception no handler answered becomes a 500 with :func:`internal_error_body`
    (and an ``X-Request-ID`` header); the traceback is logged once, under the same request id."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # noqa: BLE001 - every unexpected error: logged here, generic to the client
            request_id = uuid.uuid4().hex
            log.error("request %s (%s %s) failed: %s: %s", request_id, scope.get("method"), scope.get("path"),
                      type(exc).__name__, exc, exc_info=exc)
            if started:  # part of the answer is out: nothing to add; the server closes the connection
                return
            body = json.dumps(internal_error_body(request_id)).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"x-request-id", request_id.encode())]})
            await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """ASGI middleware: answer 413 to a body over ``max_bytes`` before anything parses it; the app then
    reads the buffered body as usual.

    A declared ``Content-Length`` over the limit is refused before reading; a chunked body once the bytes
    read pass the limit. Either way the 413 goes out at once (a client that reads while it sends stops
    there), the rest of the body is read and discarded (up to ``drain_bytes`` in all, for at most
    ``drain_seconds``), and only then is the answer completed and the connection closed, so the client
    gets the 413 rather than a connection reset. A client that sent ``Expect: 100-continue`` has sent no
    body: it is answered without reading.
    """

    def __init__(self, app: Any, max_bytes: int, drain_bytes: int | None = None,
                 drain_seconds: float = DRAIN_SECONDS) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.drain_bytes = max(DRAIN_BYTES, max_bytes) if drain_bytes is None else drain_bytes
        self.drain_seconds = drain_seconds

    async def _drain(self, receive: Any, read: int) -> None:
        async def drain() -> None:
            nonlocal read
            while read <= self.drain_bytes:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                read += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return

        try:
            await asyncio.wait_for(drain(), self.drain_seconds)
        except asyncio.TimeoutError:
            pass

    async def _reject(self, send: Any, receive: Any = None, read: int = 0) -> None:
        """Send the 413; with ``receive``, read the rest of the body (``read`` bytes so far) before ending it."""
        body = json.dumps(error_body(413, f"request body is larger than {self.max_bytes} bytes (--max-request-bytes)",
                                     code="max_request_bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        if receive is None:
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.body", "body": body, "more_body": True})
        await self._drain(receive, read)
        await send({"type": "http.response.body", "body": b""})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        try:
            declared = int(headers[b"content-length"]) if b"content-length" in headers else None
        except ValueError:
            declared = None
        if declared is not None and declared > self.max_bytes:
            expects = headers.get(b"expect", b"").lower() == b"100-continue"
            drain = not expects and declared <= self.drain_bytes
            await self._reject(send, receive if drain else None)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._reject(send, receive if more else None, size)
                return
            chunks.append(chunk)
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
