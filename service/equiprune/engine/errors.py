"""Errors the engine raises for bad input, each naming the offending field.

Adapters map these to protocol status codes in one place; the engine never needs to know
about gRPC. `field` is a dotted path such as ``dataset.labels`` or ``model.architecture``.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: an input the engine refuses, with the field it is about."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")

    def __reduce__(self):
        # Pickled across processes (data-parallel workers, job tasks): keep both parts.
        return (type(self), (self.field, self.problem))


class InvalidModelError(EngineError):
    """The submitted model cannot be loaded or does not fit the request."""


class InvalidDatasetError(EngineError):
    """The submitted dataset breaks the documented format or does not fit the model."""


class InvalidConfigError(EngineError):
    """A configuration value is out of range or inconsistent with another one."""


class UnsupportedOperationError(EngineError):
    """The request is well formed but cannot be done to this kind of model."""
