"""The SQLite job store: idempotent creation, listing, life cycle, event history, restarts."""

import hashlib
import json
import re
import threading
import types

import pytest

from equiprune.service.errors import AlreadyExists, InvalidArgument, NotFound
from equiprune.service.jobs import store as jobs_module
from equiprune.service.jobs.store import TERMINAL, SqliteJobStore

SPEC = {"model": {"artifact_id": "art-0123456789abcdef"}, "prune": {"sparsity": 0.5}}


@pytest.fixture
def store(tmp_path):
    opened = SqliteJobStore(tmp_path / "state" / "jobs.sqlite3")
    yield opened
    opened.close()


def _sequences(store, job_id):
    return [event.sequence for event in store.events_since(job_id, 0)]


# --- creating and reading -----------------------------------------------------------------


def test_create_returns_a_queued_job_with_a_first_event(store):
    job, created = store.create("prune", SPEC, request_id="req-1")

    assert created
    assert re.fullmatch(r"job-[0-9a-f]{16}", job.job_id)
    assert (job.kind, job.spec, job.state, job.request_id, job.attempt) == ("prune", SPEC, "queued", "req-1", 0)
    canonical = json.dumps(SPEC, sort_keys=True, separators=(",", ":"))
    assert job.spec_digest == hashlib.sha256(canonical.encode()).hexdigest()
    assert job.progress == {"phase": "queued"}
    assert job.start_time is None and job.end_time is None and job.error is None and job.result is None
    assert not job.done
    assert store.get(job.job_id) == job
    [event] = store.events_since(job.job_id, 0)
    assert (event.sequence, event.state, event.progress) == (1, "queued", {"phase": "queued"})


def test_get_unknown_job_is_not_found_naming_job_id(store):
    with pytest.raises(NotFound) as caught:
        store.get("job-0000000000000000")
    assert caught.value.field == "job_id"


def test_same_request_id_and_spec_returns_the_existing_job(store):
    first, created_first = store.create("prune", SPEC, request_id="req-1")
    reordered = {"prune": {"sparsity": 0.5}, "model": {"artifact_id": "art-0123456789abcdef"}}
    again, created_again = store.create("prune", reordered, request_id="req-1")

    assert created_first and not created_again
    assert again == first
    assert store.count_in_states(["queued"]) == 1


def test_same_request_id_with_another_spec_is_already_exists(store):
    store.create("prune", SPEC, request_id="req-1")
    with pytest.raises(AlreadyExists) as caught:
        store.create("prune", {**SPEC, "prune": {"sparsity": 0.9}}, request_id="req-1")
    assert caught.value.field == "request_id"


def test_without_request_id_every_create_is_a_new_job(store):
    first, _ = store.create("train", SPEC)
    second, _ = store.create("train", SPEC)
    assert first.job_id != second.job_id


def test_concurrent_creates_with_one_request_id_give_one_job(store):
    barrier = threading.Barrier(8)
    outcomes, errors = [], []

    def create():
        barrier.wait()
        try:
            outcomes.append(store.create("prune", SPEC, request_id="shared"))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len({job.job_id for job, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1
    assert store.count_in_states(["queued"]) == 1


# --- listing -------------------------------------------------------------------------------


def _make_jobs(store):
    made = []
    for index in range(7):
        job, _ = store.create("prune" if index % 2 else "train", {"index": index})
        made.append(job)
    store.mark_running(made[1].job_id)
    store.finish(made[2].job_id, "succeeded", result={})
    return made


def _all_pages(store, page_size, **filters):
    seen, token, pages = [], "", 0
    while True:
        page, token = store.list(page_size=page_size, page_token=token, **filters)
        seen.extend(page)
        pages += 1
        if not token:
            return seen, pages


def test_list_is_newest_first_and_pages_cover_everything_once(store):
    made = _make_jobs(store)

    listed, pages = _all_pages(store, page_size=3)

    assert pages == 3
    expected = sorted(made, key=lambda job: (job.create_time, job.job_id), reverse=True)
    assert [job.job_id for job in listed] == [job.job_id for job in expected]


def test_list_pages_correctly_when_create_times_tie(store, monkeypatch):
    monkeypatch.setattr(jobs_module, "time", types.SimpleNamespace(time=lambda: 1000.0))
    made = [store.create("train", {"index": index})[0] for index in range(5)]

    listed, _ = _all_pages(store, page_size=2)

    assert [job.job_id for job in listed] == sorted((job.job_id for job in made), reverse=True)


def test_list_filters_by_state_and_kind(store):
    made = _make_jobs(store)

    queued, _ = store.list(states=["queued"])
    prune_jobs, _ = store.list(kind="prune")
    running_or_done, _ = store.list(states=["running", "succeeded"])

    assert {job.job_id for job in queued} == {job.job_id for job in made} - {made[1].job_id, made[2].job_id}
    assert {job.job_id for job in prune_jobs} == {job.job_id for job in made if job.kind == "prune"}
    assert {job.job_id for job in running_or_done} == {made[1].job_id, made[2].job_id}
    filtered, pages = _all_pages(store, page_size=1, states=["queued"], kind="train")
    assert pages == len(filtered) == 3
    assert all(job.state == "queued" and job.kind == "train" for job in filtered)


def test_a_page_token_only_works_with_the_filters_it_was_issued_for(store):
    _make_jobs(store)
    _, token = store.list(states=["queued"], page_size=1)
    assert token

    with pytest.raises(InvalidArgument) as caught:
        store.list(states=["running"], page_size=1, page_token=token)
    assert caught.value.field == "page_token"
    with pytest.raises(InvalidArgument):
        store.list(states=["queued"], kind="train", page_size=1, page_token=token)
    store.list(states=["queued"], page_size=5, page_token=token)  # another page size is fine


@pytest.mark.parametrize("token", ["not-base64!!", "bm90IGpzb24=", "eyJ0IjogMX0=", "WzEsMiwzXQ=="])
def test_malformed_page_token_is_invalid_argument(store, token):
    with pytest.raises(InvalidArgument) as caught:
        store.list(page_token=token)
    assert caught.value.field == "page_token"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"page_size": 0}, "page_size"),
        ({"page_size": 1001}, "page_size"),
        ({"states": ["queued", "paused"]}, "states"),
    ],
)
def test_bad_list_arguments_name_their_field(store, arguments, field):
    with pytest.raises(InvalidArgument) as caught:
        store.list(**arguments)
    assert caught.value.field == field


# --- life cycle ----------------------------------------------------------------------------


def test_a_job_runs_reports_progress_and_succeeds(store):
    job, _ = store.create("prune", SPEC)

    running = store.mark_running(job.job_id)
    event = store.record_progress(job.job_id, {"phase": "prune", "step": 3, "total_steps": 10})
    done = store.finish(job.job_id, "succeeded", result={"measured_sparsity": 0.5})

    assert (running.state, running.attempt) == ("running", 1)
    assert running.start_time is not None
    assert (event.sequence, event.state, event.progress["step"]) == (3, "running", 3)
    assert done.state == "succeeded" and done.done
    assert done.result == {"measured_sparsity": 0.5}
    assert done.progress == {"phase": "done"}
    assert done.end_time >= done.start_time >= done.create_time
    assert [e.state for e in store.events_since(job.job_id, 0)] == ["queued", "running", "running", "succeeded"]


def test_failure_records_the_error_and_its_message_in_the_last_event(store):
    job, _ = store.create("prune", SPEC)
    store.mark_running(job.job_id)
    error = {
        "code": "INVALID_ARGUMENT",
        "message": "spec.data.group_by: no such attribute",
        "field": "spec.data.group_by",
    }

    failed = store.finish(job.job_id, "failed", error=error)

    assert failed.error == error
    last = store.events_since(job.job_id, 0)[-1]
    assert (last.state, last.progress) == ("failed", {"phase": "failed", "message": error["message"]})


def test_first_terminal_state_wins(store):
    job, _ = store.create("prune", SPEC)
    store.mark_running(job.job_id)
    succeeded = store.finish(job.job_id, "succeeded", result={"ok": True})

    after_cancel = store.finish(job.job_id, "cancelled", error={"code": "CANCELLED", "message": "late"})

    assert after_cancel == succeeded
    assert store.get(job.job_id).state == "succeeded"
    assert store.record_progress(job.job_id, {"phase": "prune"}) is None
    assert store.mark_running(job.job_id) == succeeded
    assert store.last_sequence(job.job_id) == 3


def test_a_job_cancelled_while_queued_is_not_started(store):
    job, _ = store.create("prune", SPEC)
    store.finish(job.job_id, "cancelled", error={"code": "CANCELLED", "message": "cancelled by the client"})

    after = store.mark_running(job.job_id)

    assert after.state == "cancelled" and after.done
    assert after.attempt == 0 and after.start_time is None


@pytest.mark.parametrize("state", ["queued", "running", "done"])
def test_finish_refuses_a_non_terminal_state(store, state):
    job, _ = store.create("prune", SPEC)
    with pytest.raises(ValueError, match="terminal"):
        store.finish(job.job_id, state)
    assert store.get(job.job_id).state == "queued"


def test_events_are_gapless_and_resumable(store):
    job, _ = store.create("train", SPEC)
    store.mark_running(job.job_id)
    for step in range(10):
        store.record_progress(job.job_id, {"phase": "train", "step": step})
    store.finish(job.job_id, "succeeded", result={})

    assert _sequences(store, job.job_id) == list(range(1, 14))
    assert store.last_sequence(job.job_id) == 13
    later = store.events_since(job.job_id, 5)
    assert [e.sequence for e in later] == list(range(6, 14))
    assert later[0].progress == {"phase": "train", "step": 3}
    assert [e.sequence for e in store.events_since(job.job_id, 5, limit=2)] == [6, 7]
    assert store.events_since(job.job_id, 13) == []
    with pytest.raises(NotFound):
        store.events_since("job-ffffffffffffffff", 0)


def test_sequences_stay_gapless_under_concurrent_progress(store):
    job, _ = store.create("train", SPEC)
    store.mark_running(job.job_id)

    def report(worker):
        for step in range(25):
            store.record_progress(job.job_id, {"phase": "train", "worker": worker, "step": step})

    threads = [threading.Thread(target=report, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert _sequences(store, job.job_id) == list(range(1, 103))


def test_requeue_after_a_restart_and_run_again(store):
    job, _ = store.create("prune", SPEC)
    first_run = store.mark_running(job.job_id)

    requeued = store.requeue(job.job_id, "the service restarted; the job will run again")
    second_run = store.mark_running(job.job_id)

    assert requeued.state == "queued"
    assert requeued.progress == {"phase": "queued", "message": "the service restarted; the job will run again"}
    assert second_run.attempt == 2
    assert second_run.start_time == first_run.start_time
    assert [e.state for e in store.events_since(job.job_id, 0)] == ["queued", "running", "queued", "running"]


def test_requeue_leaves_a_finished_job_alone(store):
    job, _ = store.create("prune", SPEC)
    done = store.finish(job.job_id, "failed", error={"code": "INTERNAL", "message": "boom"})
    assert store.requeue(job.job_id, "restart") == done


def test_unfinished_is_oldest_first_and_counts_match(store):
    made = _make_jobs(store)

    unfinished = store.unfinished()

    expected = [job.job_id for job in made if job.job_id != made[2].job_id]
    assert [job.job_id for job in unfinished] == expected
    assert store.count_in_states(["queued", "running"]) == 6
    assert store.count_in_states(TERMINAL) == 1
    assert store.count_in_states([]) == 0
    with pytest.raises(InvalidArgument):
        store.count_in_states(["bogus"])


# --- durability and JSON ---------------------------------------------------------------------


def test_reopening_the_file_keeps_jobs_and_events(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    first = SqliteJobStore(path)
    job, _ = first.create("prune", SPEC, request_id="req-1")
    first.mark_running(job.job_id)
    first.record_progress(job.job_id, {"phase": "prune", "metrics": {"loss": 0.25}})
    before = first.get(job.job_id)
    events_before = first.events_since(job.job_id, 0)
    first.close()

    reopened = SqliteJobStore(path)
    try:
        assert reopened.get(job.job_id) == before
        assert reopened.events_since(job.job_id, 0) == events_before
        assert reopened.create("prune", SPEC, request_id="req-1") == (before, False)
        assert [j.job_id for j in reopened.unfinished()] == [job.job_id]
        reopened.finish(job.job_id, "succeeded", result={})
        assert _sequences(reopened, job.job_id) == [1, 2, 3, 4]
    finally:
        reopened.close()


def test_nan_is_refused_and_nothing_is_written(store):
    job, _ = store.create("train", SPEC)
    store.mark_running(job.job_id)

    with pytest.raises(ValueError):
        store.record_progress(job.job_id, {"phase": "train", "metrics": {"loss": float("nan")}})
    with pytest.raises(ValueError):
        store.finish(job.job_id, "succeeded", result={"best_sparsity": float("inf")})
    with pytest.raises(ValueError):
        store.create("train", {"lr": float("nan")})

    assert store.last_sequence(job.job_id) == 2
    assert store.get(job.job_id).state == "running"
    assert store.count_in_states(["queued", "running"]) == 1


def test_find_request_returns_the_job_created_with_the_key(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    job, _ = store.create("prune", {"a": 1}, request_id="req-1")
    assert store.find_request("req-1").job_id == job.job_id
    assert store.find_request("req-2") is None
