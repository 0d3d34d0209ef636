"""The job manager's event long-poll: a history longer than one page is never cut short."""

import asyncio

from equiprune.service.jobs.manager import JobManager
from equiprune.service.settings import ServerSettings
from equiprune.service.jobs.store import SqliteJobStore


def test_a_long_history_ends_only_with_its_terminal_event(tmp_path):
    settings = ServerSettings(data_dir=tmp_path)
    store = SqliteJobStore(settings.database)
    job, _ = store.create("finetune", {"resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0}})
    store.mark_running(job.job_id)
    for step in range(1500):
        store.record_progress(job.job_id, {"phase": "finetune", "step": step})
    store.finish(job.job_id, "succeeded", result={})
    last = store.last_sequence(job.job_id)
    store.close()

    manager = JobManager.func_or_class(settings.model_dump(mode="json"))

    async def pages():
        after, seen = 0, []
        while True:
            events, done = await manager.events(job.job_id, after, 0.0)
            seen.append((len(events), done))
            after = events[-1].sequence if events else after
            if done:
                return seen, after

    seen, final = asyncio.run(pages())
    assert seen[0] == (1000, False), "the first page of a finished job is not its end"
    assert seen[-1][1] and final == last
