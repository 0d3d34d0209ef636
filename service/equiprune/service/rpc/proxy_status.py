"""Runs in Serve's gRPC proxy process: turns the encoded Status that `status.apply` put behind
a marker in the details string back into a clean message plus the `grpc-status-details-bin`
trailer, for every call type.

Why it is needed (ray 2.60, ray/serve/_private/proxy.py + replica.py): the proxy copies the
deployment's RayServegRPCContext (code, details, trailing metadata) onto the real call only
when a response message arrives (`context._set_on_grpc_context` per message). A unary call
always ends with a message, so its trailer arrives as set. A server stream that fails ends
with an exception instead; the replica wraps it in gRPCStatusError, which carries only the
code and the details string, and the trailing metadata set on the context is dropped. The
details string is therefore the one channel that survives both paths.

`install(server)` wraps the gRPCGenericServer's `service_handler_factory` on that one server
object, before our services' handlers are registered (the factory is called at registration):
each handler it builds runs unchanged and then, just before grpc sends the status, the
marker is stripped and the trailer set. Idempotent; a server without the factory (a plain
grpc server in tests) is left alone, as is any details string without the marker.
"""

from __future__ import annotations

import functools
import inspect
import logging

from equiprune.service.rpc.status import DETAILS_KEY, split_details

log = logging.getLogger("equiprune.service")
_WRAPPED = "_equiprune_status_trailer"


def install(server) -> None:
    factory = getattr(server, "service_handler_factory", None)
    if factory is None or getattr(factory, _WRAPPED, False):
        return

    @functools.wraps(factory)
    def with_status_trailer(*args, **kwargs):
        return _wrapped(factory(*args, **kwargs))

    setattr(with_status_trailer, _WRAPPED, True)
    server.service_handler_factory = with_status_trailer


def _wrapped(handler):
    if inspect.isasyncgenfunction(handler):
        @functools.wraps(handler)
        async def stream(request, context):
            try:
                async for message in handler(request, context):
                    yield message
            finally:
                restore(context)
        return stream

    @functools.wraps(handler)
    async def unary(request, context):
        try:
            return await handler(request, context)
        finally:
            restore(context)
    return unary


def restore(context) -> None:
    """Clean details and the Status trailer on the real grpc context, if `apply` left a marker."""
    try:
        message, payload = split_details(context.details())
        if payload is None:
            return
        context.set_details(message)
        kept = [(k, v) for k, v in (context.trailing_metadata() or ()) if k != DETAILS_KEY]
        context.set_trailing_metadata(tuple(kept) + ((DETAILS_KEY, payload),))
    except Exception:  # noqa: BLE001 - never fail a call over its error details
        log.exception("could not restore the status details of a call")
