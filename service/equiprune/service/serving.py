"""The model server: many served models share its replicas (Serve model multiplexing, keyed
by artifact id), and concurrent Predict calls are merged into batches (Serve dynamic
batching) so each model runs one forward pass per batch rather than one per request.

Models come from the artifact store through the engine's loader (safetensors with a
registered architecture, compact sparse safetensors, or an audited `.pt2`), so a served
model is exactly what a job produced or a client uploaded; nothing is unpickled.
"""

from __future__ import annotations

import asyncio

import torch
from ray import serve

from equiprune.engine.models.io import load_model
from equiprune.engine.modes import try_set_mode

from .settings import ServerSettings
from .store.artifacts import ArtifactStore

MAX_BATCH = 256
BATCH_WAIT_S = 0.005


@serve.deployment(name="ModelServer", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0})
class ModelServer:
    def __init__(self, settings: dict) -> None:
        s = ServerSettings.model_validate(settings)
        self.artifacts = ArtifactStore(s.artifacts, max_upload_bytes=s.max_upload_bytes,
                                       max_chunk_bytes=s.max_chunk_bytes, cache_dir=str(s.data_dir / "cache"))
        # Forward passes of tiny batches: threads would only fight over the two cores.
        torch.set_num_threads(1)

    @serve.multiplexed(max_num_models_per_replica=16)
    async def get_model(self, artifact_id: str) -> torch.nn.Module:
        def load():
            module = load_model(self.artifacts.local_path(artifact_id)).module
            try_set_mode(module, False)  # an exported program keeps the mode it was exported in
            return module

        return await asyncio.to_thread(load)

    async def predict(self, inputs: list[list[float]], shape: list[int]) -> list[list[float]]:
        """Class probabilities for each flattened input, with the model named by the request's
        multiplexed model id."""
        artifact_id = serve.get_multiplexed_model_id()
        model = await self.get_model(artifact_id)
        return await self._batched((artifact_id, model, inputs, tuple(shape)))

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _batched(self, requests: list[tuple]) -> list[list[list[float]]]:
        # A batch may mix models (the replica serves several) and, for one artifact served
        # under two names, instance shapes: one forward pass per (model, shape).
        by_model: dict[tuple, list[int]] = {}
        for i, (artifact_id, _model, _inputs, shape) in enumerate(requests):
            by_model.setdefault((artifact_id, shape), []).append(i)
        results: list = [None] * len(requests)
        for indices in by_model.values():
            model, shape = requests[indices[0]][1], requests[indices[0]][3]
            sizes = [len(requests[i][2]) for i in indices]
            flat = [row for i in indices for row in requests[i][2]]
            probabilities = await asyncio.to_thread(_forward, model, flat, shape)
            start = 0
            for i, size in zip(indices, sizes):
                results[i] = probabilities[start:start + size]
                start += size
        return results


@torch.no_grad()
def _forward(model: torch.nn.Module, rows: list[list[float]], shape: tuple[int, ...]) -> list[list[float]]:
    x = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), *shape)
    return torch.softmax(model(x).float(), dim=1).tolist()
