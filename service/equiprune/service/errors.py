"""Service errors and the one mapping from any exception to a status a client may see.

Errors carry a canonical gRPC code *name* (a string), so the planes, the stores and the job
manager can raise and record them without importing grpc; `rpc/status.py` writes the status
(with its google.rpc details) onto the call. Anything unexpected becomes INTERNAL with a short message and an incident
id that is also logged with the traceback, and recorded in the incident log that `equiprune serve`
prints and `equiprune incident <id>` reads (client/incidents.py): clients never see a stack trace.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from equiprune.client import incidents
from equiprune.engine.errors import EngineError, UnsupportedOperationError

log = logging.getLogger("equiprune.service")


class ServiceError(Exception):
    """A refusal a client can act on: a code name, a message, and the field at fault."""

    code = "INTERNAL"

    def __init__(self, message: str, field: str | None = None) -> None:
        self.message = message
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)

    def __reduce__(self):
        # Errors cross process boundaries (job manager → ingress): keep message and field.
        return (type(self), (self.message, self.field))


class InvalidArgument(ServiceError):
    code = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    code = "NOT_FOUND"


class AlreadyExists(ServiceError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(ServiceError):
    code = "RESOURCE_EXHAUSTED"


class Cancelled(ServiceError):
    code = "CANCELLED"


class Unavailable(ServiceError):
    code = "UNAVAILABLE"


class Unauthenticated(ServiceError):
    """No valid API token (tenants/auth.py)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    """A valid token whose role may not do this (tenant administration)."""

    code = "PERMISSION_DENIED"


class DataLoss(ServiceError):
    """Stored data is damaged: never used, logged for the operator."""

    code = "DATA_LOSS"


@contextmanager
def naming(field: str):
    """Re-raise a refusal from a store or another replica as being about the caller's request
    `field` (the store says `artifact_id`; the request said `spec.model.artifact_id`). A
    refusal that crossed a replica boundary arrives wrapped; its `cause` is the refusal."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only refusals are renamed; the rest propagates as it was
        refusal = refusal_of(exc)
        if refusal is not None:
            raise type(refusal)(refusal.message, field=field) from None
        raise


def refusal_of(exc: BaseException) -> ServiceError | None:
    """The refusal `exc` is or carries. Ray re-raises another replica's exception as a class
    that derives from both RayTaskError and the refusal's class, whose constructor is not the
    refusal's: the refusal itself is its `cause`."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ServiceError):
        return cause
    return exc if isinstance(exc, ServiceError) else None


@dataclass(frozen=True)
class ClientStatus:
    """What a client is told: code name, message (naming the field), and the field."""

    code: str
    message: str
    field: str | None = None

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "field": self.field or ""}


def client_status(exc: BaseException) -> ClientStatus:
    """The status for `exc`. The single place where exceptions become client-visible codes."""
    if isinstance(exc, ServiceError):
        return ClientStatus(exc.code, str(exc), exc.field)
    if isinstance(exc, UnsupportedOperationError):
        return ClientStatus("FAILED_PRECONDITION", str(exc), exc.field)
    if isinstance(exc, EngineError):
        return ClientStatus("INVALID_ARGUMENT", str(exc), exc.field)
    pydantic_status = _pydantic_status(exc)
    if pydantic_status is not None:
        return pydantic_status
    return ClientStatus("INTERNAL", internal_message(new_incident(exc)))


def internal_message(incident: str) -> str:
    """What a client is told of an incident: its id and where an operator finds the rest."""
    return f"internal error (incident {incident}; `equiprune incident {incident}` on the server shows the traceback)"


def new_incident(exc: BaseException | None = None, *, detail: str | None = None, where: str | None = None) -> str:
    """A new incident id, logged and recorded in the incident log with `exc`'s traceback (or
    `detail`). Only the exception is recorded: never a request or its metadata."""
    incident = uuid.uuid4().hex[:12]
    if detail is None:
        detail = "".join(traceback.format_exception(exc)) if exc is not None else "(no traceback)"
    where = where or _where()
    log.error("internal error %s in %s:\n%s", incident, where, detail)
    incidents.record(incident, where, detail)
    return incident


def _where() -> str:
    """The Serve deployment, or the Ray task, or the process this runs in."""
    if "ray" in sys.modules:
        try:
            from ray import serve

            context = serve.get_replica_context()
            return f"the {context.deployment} replica (pid {os.getpid()})"
        except Exception:  # noqa: BLE001 - not a replica
            pass
        try:
            import ray

            name = ray.get_runtime_context().get_task_name()
            if name:
                return f"the Ray task {name} (pid {os.getpid()})"
        except Exception:  # noqa: BLE001 - not a task
            pass
    return f"pid {os.getpid()}"


def _pydantic_status(exc: BaseException) -> ClientStatus | None:
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover - pydantic is a base dependency
        return None
    if not isinstance(exc, ValidationError):
        return None
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"]
    more = len(exc.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ClientStatus("INVALID_ARGUMENT", f"{field}: {message}" if field else message, field)
