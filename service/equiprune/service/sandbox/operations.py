"""What a sandboxed worker does once confined (see worker.py). Runs unprivileged, with only
the file descriptors its request named and its own working folder."""

from __future__ import annotations

import math
import os
import resource
import socket
from pathlib import Path
from typing import BinaryIO

from equiprune.service.sandbox.protocol import read_frame, write_frame


def run(op: str, args: dict, files: dict[str, int], requests: BinaryIO, replies: BinaryIO) -> dict | None:
    handlers = {"describe": _describe, "probe": _probe, "job": _job, "serve": _serve, "self_check": _self_check}
    if op not in handlers:
        raise ValueError(f"unknown sandbox operation {op!r}")
    return handlers[op](args, {name: os.fdopen(fd, "rb") for name, fd in files.items()}, requests, replies)


def _limits(args: dict):
    from equiprune.engine.models.footprint import ModelLimits

    return ModelLimits(**args["model_limits"]) if args.get("model_limits") else None  # as SandboxConfig sent it


def _describe(args: dict, files: dict, requests, replies) -> dict:
    from equiprune.service.artifacts.validation import describe_dataset, describe_model

    if args["kind"] == "model":
        return describe_model(files["content"], _limits(args))
    if args["kind"] == "dataset":
        return describe_dataset(files["content"], args.get("max_dataset_bytes"))
    return {}


def _probe(args: dict, files: dict, requests, replies) -> dict:
    """The width of the model's output for one zero sample of `input_shape`."""
    import torch

    from equiprune.engine.fit import output_width
    from equiprune.engine.models.io import load_model

    module = load_model(files["model"], limits=_limits(args)).module
    shape = [int(d) for d in args["input_shape"]]
    return {"outputs": output_width(module, torch.zeros((1, *shape)), "input_shape", f"one instance of shape {shape}")}


def _job(args: dict, files: dict, requests, replies) -> dict:
    """Run a job through the engine's job API; its events go out as frames as they come."""
    from equiprune.engine.errors import EngineError
    from equiprune.engine.jobs import JobInputs, JobSpec, run_job
    from equiprune.engine.jobs.spec import spec_field
    from equiprune.service.artifacts.validation import describe_model

    spec = JobSpec.from_dict(args["spec"])
    inputs = JobInputs(dataset=files["dataset"], model=files.get("model"), work_dir=Path("."),
                       limits=_limits(args), max_dataset_bytes=args.get("max_dataset_bytes"))
    try:
        outcome = run_job(spec, inputs, lambda event: write_frame(replies, {"event": event.to_dict()}))
    except EngineError as err:  # the engine names spec fields; the client wrote them under `spec.`
        raise type(err)(f"spec.{spec_field(err.field)}", err.problem) from None
    result = outcome.to_dict()
    for entry in result["files"]:
        if entry["kind"] == "model":  # described here, so CreateJob can check fit for job outputs too
            with open(entry["path"], "rb") as output:
                entry["description"] = describe_model(output, _limits(args))
    return result


def _serve(args: dict, files: dict, requests, replies) -> None:
    """Load the model once; then, per request (header: shape; payload: float32 rows), reply with
    float32 class probabilities and the rows whose output was not finite."""
    import numpy as np
    import torch

    from equiprune.engine.models.io import load_model
    from equiprune.engine.modes import try_set_mode

    module = load_model(files["model"], limits=_limits(args)).module
    try_set_mode(module, False)
    write_frame(replies, {"ready": True})
    while (frame := read_frame(requests)) is not None:
        header, payload = frame
        shape = tuple(int(d) for d in header["shape"])
        rows = np.frombuffer(payload, dtype=np.float32).reshape(-1, *shape)
        with torch.no_grad():
            probabilities = torch.softmax(module(torch.from_numpy(rows.copy())).float(), dim=1)
        bad = (~torch.isfinite(probabilities).all(dim=1)).nonzero().flatten().tolist()
        write_frame(replies, {"classes": int(probabilities.shape[1]), "non_finite_rows": bad},
                    probabilities.numpy().astype(np.float32).tobytes())
    return None


def _self_check(args: dict, files: dict, requests, replies) -> dict:
    """Try what a payload would try; report, for each, whether it was stopped."""
    checks: dict[str, dict] = {}

    def attempt(name: str, action) -> None:
        try:
            detail = action()
            checks[name] = {"stopped": False, "detail": str(detail)[:200]}
        except (OSError, MemoryError, ValueError) as exc:
            checks[name] = {"stopped": True, "detail": f"{type(exc).__name__}: {exc}"[:200]}

    for path in args.get("read", []):
        attempt(f"read {path}", lambda p=path: Path(p).read_bytes()[:16])
    for path in args.get("write", []):
        attempt(f"write {path}", lambda p=path: Path(p).write_text("sandbox was here"))
    for host, port in args.get("connect", []):
        attempt(f"connect {host}:{port}", lambda h=host, p=port: socket.create_connection((h, int(p)), timeout=2))
    if "signal_pid" in args:
        attempt(f"signal pid {args['signal_pid']}", lambda: os.kill(int(args["signal_pid"]), 0))
    attempt("become root", lambda: os.setuid(0))
    limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
    attempt("allocate beyond the memory limit", lambda: bytearray(limit + 2**20))
    attempt("write a file beyond the size limit", _write_beyond_size_limit)
    checks["identity"] = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
    return {"checks": checks}


def _write_beyond_size_limit() -> str:
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    block = b"\0" * 2**20
    with open("beyond-size-limit", "wb") as target:
        for _ in range(math.ceil((limit + 1) / len(block)) + 1):
            target.write(block)
    return f"wrote {os.path.getsize('beyond-size-limit')} bytes"

