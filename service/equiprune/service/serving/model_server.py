"""The model server: many served models share its replicas (Serve model multiplexing, keyed
by artifact id), and concurrent Predict calls are merged into batches (Serve dynamic
batching) so each model runs one forward pass per batch rather than one per request.

Every served model runs in a sandboxed worker of its own (`sandbox.Sandbox.serve`): this
replica never loads a client's model. It sends float32 rows over a pipe and gets back class
probabilities, which it checks like any hostile input; rows whose output is not finite fail
their own request (INVALID_ARGUMENT) and nothing of them is recorded. A worker that dies (a
crash, its CPU limit) is started again at the next request; a model evicted from the
replica's cache has its worker stopped.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
from ray import serve

from equiprune.service.errors import InvalidArgument
from equiprune.service.sandbox import ServedModelProcess, sandbox_from_settings
from equiprune.service.factory import artifact_store, settings_from

MAX_BATCH = 256
BATCH_WAIT_S = 0.005
# One frame to a served model's worker: at most this many float32 input values and rows, so a
# request frame and its reply (rows × classes, classes ≤ serving.plane.MAX_SERVED_CLASSES)
# stay far below the protocol's 64 MiB frame limit.
FRAME_VALUES = 4 * 2**20
FRAME_ROWS = 1024


class SandboxedModel:
    """A served model's sandboxed worker, started again when it has stopped."""

    def __init__(self, sandbox, path: str, timeout_s: float | None = None) -> None:
        self._sandbox, self._path, self._lock, self._timeout_s = sandbox, path, threading.Lock(), timeout_s
        self._process: ServedModelProcess | None = None
        self._start()

    def _start(self) -> ServedModelProcess:
        if self._process is not None:
            self._process.close()  # a stopped worker still has its folder
        self._process = None
        self._process = self._sandbox.serve({"model": self._path}, timeout_s=self._timeout_s)
        return self._process

    def probabilities(self, rows: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, list[int]]:
        with self._lock:
            process = self._process if self._process is not None and self._process.alive else self._start()
        per_frame = max(1, min(FRAME_ROWS, FRAME_VALUES // max(1, int(np.prod(shape)))))
        parts, bad = [], []
        for start in range(0, len(rows), per_frame):
            chunk = rows[start:start + per_frame]
            payload, classes, flagged = process.forward(chunk.tobytes(), shape, len(chunk), self._timeout_s)
            parts.append(np.frombuffer(payload, dtype=np.float32).reshape(len(chunk), classes))
            bad.extend(start + row for row in flagged)
        if len({p.shape[1] for p in parts}) != 1:
            raise InvalidArgument("the model's output width changed between instances", field="instances")
        return np.concatenate(parts), bad

    def __del__(self) -> None:
        # Serve calls this when the model leaves the replica's cache; so does the collector.
        process, self._process = getattr(self, "_process", None), None
        if process is not None:
            process.close()


@serve.deployment(name="ModelServer", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0})
class ModelServer:
    def __init__(self, settings: dict) -> None:
        s = settings_from(settings)
        self.artifacts = artifact_store(s)
        self.sandbox = sandbox_from_settings(s)
        self.timeout_s = s.sandbox_serving_timeout_s

    @serve.multiplexed(max_num_models_per_replica=16)
    async def get_model(self, artifact_id: str) -> SandboxedModel:
        return await asyncio.to_thread(
            lambda: SandboxedModel(self.sandbox, self.artifacts.local_path(artifact_id), self.timeout_s))

    async def predict(self, inputs: list[list[float]], shape: list[int]) -> list[list[float]]:
        """Class probabilities for each flattened input, with the model named by the request's
        multiplexed model id."""
        artifact_id = serve.get_multiplexed_model_id()
        model = await self.get_model(artifact_id)
        answer = await self._batched((artifact_id, model, inputs, tuple(shape)))
        if isinstance(answer, Exception):
            raise answer
        return answer

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _batched(self, requests: list[tuple]) -> list:
        # A batch may mix models (the replica serves several) and, for one artifact served
        # under two names, instance shapes: one forward pass per (model, shape).
        by_model: dict[tuple, list[int]] = {}
        for i, (artifact_id, _model, _inputs, shape) in enumerate(requests):
            by_model.setdefault((artifact_id, shape), []).append(i)
        results: list = [None] * len(requests)
        for indices in by_model.values():
            model, shape = requests[indices[0]][1], requests[indices[0]][3]
            sizes = [len(requests[i][2]) for i in indices]
            rows = np.asarray([row for i in indices for row in requests[i][2]], dtype=np.float32)
            try:
                probabilities, bad = await asyncio.to_thread(model.probabilities, rows, shape)
            except Exception as exc:  # noqa: BLE001 - the batch's requests fail, the replica serves on
                for i in indices:
                    results[i] = exc
                continue
            start = 0
            for i, size in zip(indices, sizes):
                failed = [row - start for row in bad if start <= row < start + size]
                results[i] = _non_finite(failed) if failed else probabilities[start:start + size].tolist()
                start += size
        return results


def _non_finite(rows: list[int]) -> InvalidArgument:
    return InvalidArgument(f"the model's output for {len(rows)} instance(s) of this request, this one first, is not "
                           "finite (NaN or infinity); nothing of the request was recorded",
                           field=f"instances[{rows[0]}].values")
