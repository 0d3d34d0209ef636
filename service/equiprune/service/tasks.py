"""The Ray task that runs one job and streams its progress back to the job manager.

A streaming generator task: it yields ("started", None) once it holds its resources, then
("progress", dict) events, then one ("result", dict) or ("error", status dict). The engine
runs in a thread because its progress arrives through a callback while the generator must
yield from its own frame. Errors come back as data — already mapped to a client status in
the worker, whose log keeps any traceback — rather than as a wrapped Ray exception.
Cancellation is `ray.cancel(generator, force=True)`: the worker process exits, which frees
its CPUs/GPUs at once and also ends any Ray Train workers it owns.
"""

from __future__ import annotations

import queue
import threading

import ray

from .errors import client_status


@ray.remote(num_returns="streaming", max_retries=0)
def execute_job(job_id: str, spec_json: dict, settings_json: dict, threads: int):
    import torch

    from .runner import run_job
    from .settings import ServerSettings
    from .specs import JobSpecModel

    # Ray gives each task one thread unless told otherwise; use what the job reserved.
    torch.set_num_threads(max(1, threads))
    events: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            settings = ServerSettings.model_validate(settings_json)
            spec = JobSpecModel.model_validate(spec_json)
            result = run_job(job_id, spec, settings, lambda progress: events.put(("progress", progress)))
            events.put(("result", result))
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the job record
            events.put(("error", client_status(exc).to_dict()))

    threading.Thread(target=work, name=f"job-{job_id}", daemon=True).start()
    yield ("started", None)
    while True:
        kind, payload = events.get()
        yield (kind, payload)
        if kind in ("result", "error"):
            return
