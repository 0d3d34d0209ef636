"""The one error type the SDK raises for a refused or failed call.

The service words its refusals as `<field>: <problem>` (e.g. `sha256: must be 64 hex digits`),
so the field at fault is recovered from the message; callers can then point at the flag or
argument a person has to change.
"""

from __future__ import annotations

import re

import grpc

# A field path such as `sha256`, `spec.data.group_by` or `spec.data.group_by[0]`, then ": ".
# Free text ("failed to connect to all addresses; ...") has spaces before its first colon and
# therefore never matches.
_FIELD_PREFIX = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_]*(?:(?:\.[A-Za-z_][A-Za-z0-9_]*)|(?:\[\d+\]))*): (?P<problem>.+)$",
                           re.DOTALL)


class EquipruneError(Exception):
    """A call the server refused or could not complete.

    code: the gRPC status code. message: the server's message (naming the field when there is
    one). field: the field at fault, parsed from the message, or None.
    """

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None) -> None:
        self.code = code
        self.message = message
        self.field = field
        super().__init__(f"{code.name}: {message}")

    @property
    def problem(self) -> str:
        """The message without its `<field>: ` prefix."""
        if self.field and self.message.startswith(f"{self.field}: "):
            return self.message[len(self.field) + 2:]
        return self.message

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "EquipruneError":
        """The EquipruneError for a failed call (a grpc.RpcError that is also a grpc.Call)."""
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        details = error.details() if callable(getattr(error, "details", None)) else None
        message = details or str(error) or code.name
        return cls(code or grpc.StatusCode.UNKNOWN, message, parse_field(message))


def parse_field(message: str) -> str | None:
    """The field named by a message of the form `<field>: <problem>`, else None."""
    match = _FIELD_PREFIX.match(message)
    return match.group("field") if match else None


def status_code(error: BaseException) -> grpc.StatusCode | None:
    """The status code of a failed gRPC call or an EquipruneError; None for anything else."""
    if isinstance(error, EquipruneError):
        return error.code
    if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
        return error.code()
    return None


class SpecError(ValueError):
    """An argument refused before any call: `field` names it, `problem` says why."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")
