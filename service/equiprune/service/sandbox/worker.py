"""The sandboxed worker: the only process that parses, validates or loads a client's model or
dataset (except data-parallel workers, which read data-only formats; `distributed.py`).

Started by `process.py` as ``python -m equiprune.service.sandbox.worker`` with a request
frame on stdin and the client's files as inherited file descriptors. It confines itself
(`confine.enter`), imports what its operation needs while it still can read the Python
installation, gives up its privileges (`confine.drop`), and only then opens the files:

    describe   validate an artifact, return its description          (upload, import)
    probe      run a model on one zero sample of a shape              (deploy)
    job        compute a single-worker job into its working folder    (every job kind)
    serve      load a model once, then answer forward passes          (Predict)
    self_check try what a payload would try, report what was stopped  (startup, tests)

Replies are frames on a private copy of stdout (fd 1 is pointed at stderr, so a library's
print cannot corrupt them): events, then one `result` or one `error` whose code is one a
client may see. The service treats every reply as hostile input.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import traceback

from equiprune.service.sandbox import confine
from equiprune.service.sandbox.protocol import read_frame, write_frame
from equiprune.service.sandbox.warmup import KIT_FILES, warm_up

# Imported before the privileges go (the stdlib and site-packages may be unreadable to the
# sandbox's user): everything the operations reach, including torch's lazy imports on the
# paths they take. A module missed here fails loudly as "cannot import" (an operator bug).
_PRELOAD = {
    "common": ("json", "math", "zipfile", "zlib", "struct", "io", "tempfile", "encodings.idna", "numpy",
               "torch", "safetensors.torch", "torch.export", "torch._export.serde.serialize",
               "torch.export.pt2_archive._package", "torch.fx.experimental.symbolic_shapes", "sympy",
               "equiprune.engine.models.io", "equiprune.engine.models.sparse", "equiprune.engine.dataset",
               "equiprune.engine.models.architectures", "equiprune.service.artifacts.validation",
               "equiprune.service.sandbox.operations"),
    # What a job needs beyond loading (exporting a .pt2 output, pruning, fine-tuning), as
    # measured by running every job kind after the warm-up; tests/service/test_sandbox.py runs
    # them all in a sandbox, so a module missing here fails there.
    "job": ("equiprune.engine.jobs", "equiprune.engine.pipeline", "equiprune.engine.diagnostics",
            "equiprune.engine.budget", "equiprune.engine.pruning.structured", "torch_pruning",
            "equiprune.engine.finetune.loop", "torch.nn.parallel", "torch.optim.lr_scheduler", "numpy.ctypeslib",
            "sympy.sets.setexpr", "torch._export.passes._node_metadata_hook",
            "torch._export.passes.replace_autocast_with_hop_pass", "torch._export.passes.replace_set_grad_with_hop_pass",
            "torch._export.passes.replace_with_hop_pass_util", "torch._inductor.compiler_bisector",
            "torch._inductor.dependencies", "torch._inductor.fx_passes.dedupe_symint_uses", "torch._inductor.ir",
            "torch._inductor.loop_body", "torch._inductor.runtime.benchmarking", "torch._subclasses.schema_check_mode",
            "torch.profiler._cupti_monitor", "torch.utils.serialization.config"),
}


def main() -> int:
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to the log, never into the reply stream
    requests = os.fdopen(0, "rb")
    frame = read_frame(requests)
    if frame is None:
        return 2
    request, _ = frame
    try:
        files = {name: int(fd) for name, fd in request.get("files", {}).items()}
        limits = confine.Limits.from_json(request["limits"])
        threads = max(1, int(request.get("args", {}).get("threads", 1)))
        isolation = confine.enter(limits, request["work_dir"], {0, 2, replies.fileno(), *files.values()},
                                  parent_pid=int(request["parent_pid"]), threads=threads)
        _preload(request["op"], request.get("args", {}))
        warm_up({name: os.fdopen(files.pop(name), "rb") for name in KIT_FILES if name in files})
        isolation = confine.drop(isolation, int(request["uid_base"]))
        os.environ.update(TMPDIR=confine.PRIVATE_TMP,
                          HOME=confine.SANDBOX_HOME if isolation.private_tmp else request["work_dir"])
        write_frame(replies, {"isolation": isolation.to_json()})
    except Exception as exc:  # noqa: BLE001 - the parent must learn why the sandbox did not start
        traceback.print_exc()
        write_frame(replies, {"error": {"code": "INTERNAL", "field": "", "message": f"the sandbox did not start: {exc}"}})
        return 1
    try:
        from equiprune.service.sandbox import operations

        answer = operations.run(request["op"], request.get("args", {}), files, requests, replies)
        if answer is not None:
            write_frame(replies, {"result": answer})
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one error frame
        write_frame(replies, {"error": _status(exc)})
        return 1


def _preload(op: str, args: dict) -> None:
    for name in _PRELOAD["common"] + (_PRELOAD["job"] if op == "job" else ()):
        importlib.import_module(name)
    import torch
    import torch.utils._pytree as pytree

    # A pytree spec may name an enum, which makes torch import the module it names: never.
    pytree.enum_object_hook = _refuse_enum
    torch.set_num_threads(max(1, int(args.get("threads", 1))))
    if args.get("device") == "cuda":
        torch.cuda.init()


def _refuse_enum(obj: dict):
    if "__enum__" in obj:
        raise ValueError("a pytree spec names an enum type, which is not accepted")
    return obj


def _status(exc: BaseException) -> dict:
    """What the parent is told: a client's mistake (engine refusals, limits reached) with its
    field, or INTERNAL with the traceback left in this process's log (the parent's log)."""
    from equiprune.service.errors import client_status

    if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "not enough memory" in str(exc):
        return {"code": "RESOURCE_EXHAUSTED", "field": "",
                "message": "the work needs more memory than the sandbox allows (setting sandbox_*_memory_bytes)"}
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return {"code": "RESOURCE_EXHAUSTED", "field": "",
                "message": "the work wrote a file larger than the sandbox allows (4 × max_upload_bytes for jobs)"}
    if isinstance(exc, ImportError):
        traceback.print_exc()
        return {"code": "INTERNAL", "field": "", "message": f"the sandbox cannot import {exc.name!r} after dropping "
                                                            "its privileges; add it to worker._PRELOAD"}
    status = client_status(exc) if isinstance(exc, Exception) else None
    if status is None or status.code == "INTERNAL":
        traceback.print_exc()
        return {"code": "INTERNAL", "field": "", "message": f"{type(exc).__name__} in the sandbox"}
    return status.to_dict()


if __name__ == "__main__":
    sys.exit(main())
