"""The OpenAI-compatible HTTP gateway: an aiohttp app on the daemon's loop.

Every request passes one middleware, which gives it a request id (the
caller's `x-request-id` if sane, as over gRPC), authenticates it with the
same Authenticator and tokens as gRPC (only /health is open), sets
principal.current for the core, and turns any exception into an OpenAI
error body through errors.py.  The handlers convert, call the core, and
convert back.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import replace
from typing import Any

from aiohttp import web

from runtime import errors
from runtime.auth import principal
from runtime.auth.authenticator import Authenticator
from runtime.core import CallContext, InferenceService
from runtime.http import converters
from runtime.http.errors import INVALID, HttpError, error_body, error_reply
from runtime.http.responses import (
    ChatFormat,
    CompletionFormat,
    embeddings_json,
    model_json,
    models_json,
)
from runtime.http.sse import reply_with_generation
from runtime.models.manager import ModelState
from runtime.request_meta import REQUEST_ID_KEY, SUBJECT_KEY, sane_request_id, sane_subject

log = logging.getLogger("hearth.http")

OPEN_PATHS = frozenset(("/health", "/v1/health"))
# aiohttp's own refusals, in OpenAI's error shape.
_PROTOCOL_CODES = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large",
                   415: "unsupported_media_type"}


class ProtocolError(Exception):
    """A refusal about HTTP itself (route, method, media type, size)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.json_response(body, status=status, headers=headers,
                             dumps=lambda b: json.dumps(b, ensure_ascii=False))


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; size (client_max_size), media type,
    encoding, syntax and nesting are checked here, fields by converters."""
    if request.content_type != "application/json":
        raise ProtocolError(415, "Content-Type must be application/json, got "
                                 f"{request.content_type!r}")
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise errors.InvalidArgument("the request body is not valid UTF-8") from None
    except RecursionError:
        raise errors.InvalidArgument("the request body is nested too deeply") from None
    except ValueError as exc:
        raise errors.InvalidArgument(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise errors.InvalidArgument("the request body must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class HttpGateway:
    def __init__(self, core: InferenceService, authenticator: Authenticator,
                 max_body_bytes: int, stop_timeout_s: float = 1.0) -> None:
        self.core = core
        self.repository = core.repository
        self.authenticator = authenticator
        self.created = int(time.time())     # "created" of every model object
        self.app = web.Application(client_max_size=max_body_bytes,
                                   middlewares=[self._middleware])
        self.app.on_response_prepare.append(_add_request_id)
        self.app.router.add_get("/v1/models", self.list_models)
        self.app.router.add_get("/v1/models/{model}", self.get_model)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        for path in sorted(OPEN_PATHS):
            self.app.router.add_get(path, self.health)
        # handler_cancellation: a client that disconnects cancels its
        # handler, which closes the core's stream and frees the engine slot
        # even for a non-streaming request that has written nothing yet.
        self.runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None,
                                    shutdown_timeout=stop_timeout_s)

    # ---- life -------------------------------------------------------------

    async def start(self, addr: str) -> str:
        """Binds HOST:PORT (port 0 picks one); returns the bound address."""
        host, _, port = addr.rpartition(":")
        await self.runner.setup()
        site = web.TCPSite(self.runner, host.strip("[]"), int(port))
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise errors.Unavailable(f"cannot listen on {addr}: {exc.strerror}") from exc
        bound = f"{host}:{self.runner.addresses[0][1]}"
        log.info("OpenAI-compatible HTTP on http://%s/v1", bound)
        return bound

    async def stop(self) -> None:
        """Stops listening; handlers still running get stop_timeout_s."""
        await self.runner.cleanup()

    # ---- every request ------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        request_id = request.headers.get(REQUEST_ID_KEY, "")
        request["request_id"] = request_id if sane_request_id(request_id) \
            else uuid.uuid4().hex[:16]
        try:
            caller = principal.ANONYMOUS
            if request.path not in OPEN_PATHS:
                values = request.headers.getall("Authorization", [])
                if len(values) > 1:
                    raise errors.Unauthenticated("authorization: send one Authorization header")
                caller = self.authenticator.authenticate_http(values[0] if values else None)
            request["principal"] = caller
            # Each request may run on its connection's task: reset, not leak.
            token = principal.current.set(caller)
            try:
                return await handler(request)
            finally:
                principal.current.reset(token)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _protocol_reply(_refusal(request, exc))
        except ProtocolError as exc:
            return _protocol_reply(exc)
        except Exception as exc:
            if not isinstance(exc, errors.HearthError):
                log.exception("unexpected error in %s %s", request.method, request.path,
                              extra={"request_id": request["request_id"]})
            status, body, headers = error_reply(exc)
            return _json(body, status, headers)

    def _context(self, request: web.Request) -> CallContext:
        caller: principal.Principal = request["principal"]
        subject = request.headers.get(SUBJECT_KEY, "")
        return CallContext(
            request_id=request["request_id"],
            client=caller.identity if not caller.anonymous
            else f"http:{request.remote or 'unknown'}",
            subject=subject if sane_subject(subject) else "",
            principal=caller)

    def _model_named(self, request: web.Request, name: str) -> str:
        """The name to generate with and to answer with: an empty one means
        the only loaded model, resolved now so every stream chunk names it
        (the repository's rules: a caller learns no model it may not use)."""
        return name or self.repository.get("", request["principal"]).name

    # ---- routes ----------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        names = [h.name for h in self.repository.index(request["principal"]).loaded
                 if h.state is ModelState.READY]
        return _json(models_json(names, self.created))

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if len(name) > converters.MAX_MODEL_NAME:
            raise errors.NotFound("model: no model has so long a name")
        handle = self.repository.get(name, request["principal"])
        if handle.state is not ModelState.READY:
            raise errors.NotFound(f"model {name!r} is {handle.state.value}, not ready")
        return _json(model_json(handle.name, self.created))

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        call = converters.chat_call(await read_json(request))
        return await self._generation(request, call, self.core.chat, ChatFormat, "chatcmpl")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        call = converters.completion_call(await read_json(request))
        return await self._generation(request, call, self.core.generate, CompletionFormat,
                                      "cmpl")

    async def _generation(self, request: web.Request, call: Any, run: Any, fmt_cls: Any,
                          id_prefix: str) -> web.StreamResponse:
        """Both generation endpoints: resolve the model, run the core, and
        answer whole or as server-sent events."""
        core_request = replace(call.request,
                               model=self._model_named(request, call.request.model))
        ctx = self._context(request)
        fmt = fmt_cls(f"{id_prefix}-{ctx.request_id}", int(time.time()), core_request.model,
                      call.logprobs, call.streaming.include_usage)
        return await reply_with_generation(request, run(core_request, ctx), fmt,
                                           call.streaming.stream)

    async def embeddings(self, request: web.Request) -> web.Response:
        call = converters.embedding_call(await read_json(request))
        result = await self.core.embed(call.request, self._context(request))
        return _json(embeddings_json(result, call.encoding_format))

    async def health(self, request: web.Request) -> web.Response:
        """For load balancers: 200 while serving at least one model, else
        503.  Open to all, so it names no models."""
        serving = not self.core.draining and self.repository.serving()
        return _json({"status": "ok" if serving else "unavailable"}, 200 if serving else 503)


def _refusal(request: web.Request, exc: web.HTTPException) -> ProtocolError:
    """aiohttp's own refusals, with messages that say what to do."""
    path = request.path if len(request.path) <= 100 else request.path[:100] + "..."
    allow = exc.headers.get("Allow", "")
    if exc.status == 404:
        return ProtocolError(404, f"unknown route: {request.method} {path}")
    if exc.status == 405:
        return ProtocolError(405, f"{request.method} is not allowed on {path} (allowed: "
                                  f"{allow})", {"Allow": allow})
    if exc.status == 413:
        return ProtocolError(413, f"the request body is larger than the server's limit of "
                                  f"{request.client_max_size} bytes")
    return ProtocolError(exc.status, exc.reason)


def _protocol_reply(exc: ProtocolError) -> web.Response:
    mapped = HttpError(exc.status, INVALID.type)
    body = error_body(str(exc), mapped, None, _PROTOCOL_CODES.get(exc.status))
    return _json(body, exc.status, exc.headers)


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[REQUEST_ID_KEY] = request.get("request_id", "")
