"""Registering servicers from their proto service descriptors.

Every method gets the same three things, here and nowhere else:
  * authentication before the handler runs: the caller's Principal, or
    UNAUTHENTICATED;
  * request decoding that turns a malformed message into INVALID_ARGUMENT
    naming the field (protobuf itself only says "error parsing message", and
    grpc would answer INTERNAL): a string field holding invalid UTF-8 is
    found by re-parsing with a twin message whose strings are bytes;
  * error mapping: an exception family raised by the servicer becomes its
    status (status.py), an unexpected exception becomes INTERNAL and is
    logged with the request id.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from runtime import errors
from runtime.auth import principal
from runtime.server.status import abort_args

log = logging.getLogger("hearth.server")


class Authenticator(Protocol):
    """Who the caller is: auth/authenticator.py's for the daemon's services,
    federation/online.py's SiteAuthenticator for the federation's."""

    def authenticate(self, context: grpc.aio.ServicerContext) -> principal.Principal: ...


@dataclass(frozen=True)
class MalformedRequest:
    reason: str


def _lenient_class(desc: Descriptor) -> type[Message]:
    """A twin of `desc` (and every message of its file) with string fields
    turned into bytes fields, in a private descriptor pool."""
    pool = descriptor_pool.DescriptorPool()
    seen: set[str] = set()

    def add(file_desc: Any) -> None:
        if file_desc.name in seen:
            return
        seen.add(file_desc.name)
        for dep in file_desc.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        file_desc.CopyToProto(proto)
        stack = list(proto.message_type)
        while stack:
            msg = stack.pop()
            stack.extend(msg.nested_type)
            for f in msg.field:
                # A map key cannot be bytes: a bad key stays a parse error.
                is_map_key = msg.options.map_entry and f.name == "key"
                if f.type == FieldDescriptor.TYPE_STRING and not is_map_key:
                    f.type = FieldDescriptor.TYPE_BYTES
        pool.Add(proto)

    add(desc.file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(desc.full_name))


def _find_bad_utf8(msg: Message, original: Descriptor, prefix: str = "") -> str | None:
    for field, value in msg.ListFields():
        orig = original.fields_by_name[field.name]
        path = f"{prefix}{field.name}"
        repeated = field.is_repeated
        if orig.message_type is not None and orig.message_type.GetOptions().map_entry:
            # A map: check its values, named by their (valid UTF-8) keys.
            orig = orig.message_type.fields_by_name["value"]
            entries = [(f"{path}[{k!r}]", v) for k, v in value.items()]
        else:
            items = list(value) if repeated else [value]
            entries = [(f"{path}[{i}]" if repeated else path, v) for i, v in enumerate(items)]
        for where, item in entries:
            if orig.type == FieldDescriptor.TYPE_STRING:
                try:
                    item.decode("utf-8")
                except UnicodeDecodeError:
                    return where
            elif orig.type == FieldDescriptor.TYPE_MESSAGE:
                found = _find_bad_utf8(item, orig.message_type, f"{where}.")
                if found:
                    return found
    return None


def lenient_deserializer(cls: type[Message]) -> Callable[[bytes], Message | MalformedRequest]:
    twin: list[type[Message]] = []

    def deserialize(data: bytes) -> Message | MalformedRequest:
        try:
            return cls.FromString(data)
        except DecodeError:
            pass
        if not twin:
            twin.append(_lenient_class(cls.DESCRIPTOR))
        try:
            loose = twin[0].FromString(data)
        except DecodeError:
            return MalformedRequest("the request is not a valid protobuf message")
        field = _find_bad_utf8(loose, cls.DESCRIPTOR)
        if field:
            return MalformedRequest(f"{field}: not valid UTF-8")
        return MalformedRequest("the request is not a valid protobuf message")

    return deserialize


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if not isinstance(exc, errors.HearthError):
        log.exception("unexpected error in %s", method, exc_info=exc)
    code, message, trailers = abort_args(exc)
    await context.abort(code, message, trailers)


def reject_malformed(request: Any) -> None:
    """InvalidArgument for a request the lenient decoder could not read."""
    if isinstance(request, MalformedRequest):
        raise errors.InvalidArgument(request.reason)


def _admit(authenticator: Authenticator, context: grpc.aio.ServicerContext,
           request: Any) -> None:
    """Authenticates the caller (first: an unauthenticated caller learns
    nothing about its request), then rejects a malformed request."""
    principal.current.set(authenticator.authenticate(context))
    reject_malformed(request)


def _unary(method: str, impl: Callable[..., Any], authenticator: Authenticator
           ) -> Callable[..., Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            _admit(authenticator, context, request)
            return await impl(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)
    return handler


def _stream(method: str, impl: Callable[..., AsyncIterator[Any]], authenticator: Authenticator,
            bidi: bool = False) -> Callable[..., Any]:
    """Server streaming, or with bidi a stream of requests: then the caller
    is authenticated once, before the first request is read, and requests
    reach the servicer as decoded, possibly MalformedRequest: it answers
    those one by one (reject_malformed) when its protocol reports errors per
    request and keeps the stream open."""
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            _admit(authenticator, context, None if bidi else request)
            async for reply in impl(request, context):
                yield reply
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method)
    return handler


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object,
                authenticator: Authenticator) -> None:
    handlers = {}
    for method in service.methods:
        impl = getattr(servicer, method.name)
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        full = f"/{service.full_name}/{method.name}"
        kwargs = dict(request_deserializer=lenient_deserializer(request_cls),
                      response_serializer=response_cls.SerializeToString)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _stream(full, impl, authenticator, bidi=True), **kwargs)
        elif method.client_streaming:
            raise errors.InternalError(f"{full}: client streaming without server streaming "
                                       "is not supported here")
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _stream(full, impl, authenticator), **kwargs)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(full, impl, authenticator), **kwargs)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),))
