"""At startup, before anything else: start one sandboxed worker and let it try what a payload
would — read the job database, write into the data folder, connect to a port of this host,
signal the service, become root, allocate and write beyond its limits — so that a host where
the sandbox cannot isolate (no root, no namespaces) is known before the first upload, not
after it. `equiprune serve` prints the summary and refuses to start when isolation is
required and incomplete."""

from __future__ import annotations

import os
import socket

from equiprune.service.errors import ServiceError

GiB = 2**30


class SandboxUnsafe(Exception):
    """The sandbox let something through that it must stop."""


def check_sandbox(settings) -> str:
    """A one-line summary of the isolation achieved; SandboxUnsafe when a check failed."""
    from equiprune.service.sandbox import sandbox_from_settings
    from equiprune.service.factory import prepare_data_dir

    prepare_data_dir(settings)
    sandbox = sandbox_from_settings(settings)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        try:
            report = sandbox.run("self_check", {
                "read": [str(settings.database)] if settings.database.exists() else [],
                "write": [str(settings.data_dir / "sandbox-was-here")],
                "connect": [["127.0.0.1", listener.getsockname()[1]]], "signal_pid": os.getpid()},
                {}, purpose="validation", timeout_s=120)
        except ServiceError as err:
            raise SandboxUnsafe(f"the sandbox did not start: {err.message}") from None
    let_through = [name for name, outcome in report["checks"].items()
                   if name != "identity" and not outcome.get("stopped")]
    if let_through and settings.sandbox_isolation == "full":
        raise SandboxUnsafe(f"the sandbox let through: {', '.join(let_through)}")
    config = sandbox.config
    limits = ", ".join(f"{purpose} {config.limits[purpose].memory_bytes / GiB:.1f} GiB / "
                       f"{config.limits[purpose].cpu_seconds} s CPU" for purpose in ("validation", "job", "serving"))
    kind = ("full isolation: a user of its own per worker, no network, private /tmp"
            if not let_through else f"limits only (not stopped: {', '.join(let_through)})")
    return f"sandbox: {kind}; memory/CPU limits: {limits}"
