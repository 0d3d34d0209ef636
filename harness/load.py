"""A bounded mixed load from several tenants at once against a running equiprune server
(issue #11, item 7): shared by bench/load_tenants.py and tests/service/test_load_tenants_e2e.py.

Each tenant has its own token, a small `max_concurrent_jobs` quota and a model served under
the same name as every other tenant's ("digits"). During the load, per tenant, three threads:

- predict: Predict batches of `batch` digits instances, back to back;
- report: ReportOutcomes with the true label of every prediction the first thread made;
- jobs: every `job_every_s`, CreateJob (a long train job) and, while it is held for `hold_s`,
  CreateJob again (RESOURCE_EXHAUSTED naming `quotas.max_concurrent_jobs` is intended and
  counted apart), GetJob, WaitJob with a 0.2 s timeout; ListJobs throughout; then CancelJob.

Every call's latency and status code is recorded per RPC. Afterwards each tenant's
GetModelMetrics totals must equal what that tenant made and had acknowledged: predictions,
and outcomes joined (exactly once, in its own tenant).
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from equiprune.client import specs
from equiprune.client.credentials import open_channel
from equiprune.client.errors import EquipruneError
from equiprune.client.sdk import EquipruneClient
from equiprune.client.tenants import quotas_message
from equiprune.v1 import jobs_pb2, jobs_pb2_grpc, serving_pb2, serving_pb2_grpc
from harness.traffic import instances, percentile, traffic_rows

SERVED = "digits"
QUOTA_FIELD = "quotas.max_concurrent_jobs"
DIGITS_CNN = {"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [8]}
SHORT_WAIT = Duration(nanos=200_000_000)  # WaitJob's timeout while polling
OUTCOME_KINDS = ("joined", "unknown", "duplicate", "late", "invalid")  # ReportOutcomesResponse, MonitorTotals
UNFINISHED = [jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING]
LONG_TRAIN_EPOCHS = 200  # never finishes while held: cancelled after hold_s


def train_model_file(path: Path) -> Path:
    """A small digits CNN trained here (3 epochs, a few seconds), saved as safetensors."""
    import torch

    from equiprune.engine.demo_data import digits_group_dataset
    from equiprune.engine.finetune.config import FinetuneConfig
    from equiprune.engine.finetune.loop import finetune
    from equiprune.engine.models.io import save_safetensors
    from equiprune.engine.models.registry import ArchitectureSpec, build_model

    spec = ArchitectureSpec("small_cnn", DIGITS_CNN)
    dataset = digits_group_dataset()
    torch.manual_seed(0)
    model = build_model(spec)
    finetune(model, {}, dataset.select(("cohort",), split="train", min_group_size=0),
             FinetuneConfig(method="naive", epochs=3, lr=0.05))
    save_safetensors(model.eval(), spec, path)
    return path


@dataclass
class Tenant:
    name: str
    token: str
    dataset: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    predicted: int = 0  # instances Predict answered (OK)
    outcomes_sent: int = 0  # in ReportOutcomes calls that answered OK
    outcomes_unanswered: int = 0  # in calls that failed: not acknowledged
    acknowledged: Counter = field(default_factory=Counter)  # the replies' joined/unknown/duplicate/late/invalid
    foreign_ids: int = 0  # prediction ids not of the form <tenant>/digits.<hex>
    exhausted: int = 0  # intended RESOURCE_EXHAUSTED
    quota_not_enforced: int = 0  # a CreateJob accepted while the tenant's job was still unfinished
    job_states: Counter = field(default_factory=Counter)


def setup_tenants(target: str, admin_token: str, names: list[str], model_path: Path,
                  max_concurrent_jobs: int = 1) -> list[Tenant]:
    """Create the tenants and tokens; each imports the digits sample, uploads the model, runs
    one evaluate job for the reference and deploys its model as "digits"."""
    tenants, clients, jobs = [], [], []
    with EquipruneClient(target, timeout=120, token=admin_token) as admin:
        for name in names:
            admin.create_tenant(name, quotas=quotas_message(max_concurrent_jobs=max_concurrent_jobs))
            tenants.append(Tenant(name, admin.create_token(name, "load test").secret))
    for t in tenants:
        client = EquipruneClient(target, timeout=300, token=t.token)
        t.dataset = client.import_uri("sample:digits", "dataset").artifact_id
        model = client.upload_file(model_path, "model").artifact_id
        jobs.append((model, client.create_job(specs.evaluate_spec(model=model, dataset=t.dataset, group_by="cohort"))))
        clients.append(client)
    for t, client, (model, job) in zip(tenants, clients, jobs):  # the evaluate jobs run side by side
        job = client.wait_job(job.job_id, timeout=600)
        if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
            raise RuntimeError(f"{t.name}'s evaluate job ended {jobs_pb2.JobState.Name(job.state)}: {job.error}")
        client.deploy_model(SERVED, model, ["cohort"], reference_job_id=job.job_id)
        client.close()
    return tenants


class Recorder:
    """Every call's latency and status code per RPC; unintended failures with a sample message."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self.unintended: Counter = Counter()  # (rpc, code)
        self.samples: dict[tuple[str, str], str] = {}

    def call(self, rpc: str, method, request, timeout: float = 60.0):
        """(reply, None) or (None, EquipruneError)."""
        begun = time.perf_counter()
        try:
            reply, error, code = method(request, timeout=timeout), None, "OK"
        except grpc.RpcError as err:
            reply, error = None, EquipruneError.from_rpc_error(err)
            code = error.code.name
        elapsed = time.perf_counter() - begun
        with self.lock:
            self.calls[rpc].append((elapsed, code))
            if error is not None and not intended(rpc, error):
                self.unintended[(rpc, code)] += 1
                self.samples.setdefault((rpc, code), error.message[:300])
        return reply, error


def intended(rpc: str, error: EquipruneError) -> bool:
    return rpc == "CreateJob" and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.field == QUOTA_FIELD


def _predict_once(t: Tenant, stub, rec: Recorder, rows: list[dict], batch: int, offset: int, out: queue.Queue) -> None:
    request = serving_pb2.PredictRequest(model=SERVED, instances=instances(rows, batch, offset))
    reply, _ = rec.call("Predict", stub.Predict, request)
    if reply is None:
        return
    ids = [p.prediction_id for p in reply.predictions]
    with t.lock:
        t.predicted += len(ids)
        t.foreign_ids += sum(not i.startswith(f"{t.name}/{SERVED}.") for i in ids)
    labels = (rows[(offset + i) % len(rows)]["label"] for i in range(batch))  # the instances' own, in order
    out.put(list(zip(ids, labels)))


def _predict(t: Tenant, stub, rec: Recorder, rows: list[dict], batch: int, deadline: float, out: queue.Queue) -> None:
    offset = 0
    while time.monotonic() < deadline:
        _predict_once(t, stub, rec, rows, batch, offset, out)
        offset += batch
    out.put(None)


def _report(t: Tenant, stub, rec: Recorder, pending: queue.Queue, most: int) -> None:
    done = False
    while not done:
        item = pending.get()
        outcomes = [] if item is None else list(item)
        done = item is None
        while not done and len(outcomes) < most:
            try:
                item = pending.get_nowait()
            except queue.Empty:
                break
            if item is None:
                done = True
            else:
                outcomes += item
        if not outcomes:
            continue
        request = serving_pb2.ReportOutcomesRequest(outcomes=[serving_pb2.Outcome(prediction_id=i, label=label)
                                                              for i, label in outcomes])
        reply, _ = rec.call("ReportOutcomes", stub.ReportOutcomes, request)
        with t.lock:
            if reply is None:
                t.outcomes_unanswered += len(outcomes)
                continue
            t.outcomes_sent += len(outcomes)
            t.acknowledged.update({k: getattr(reply, k) for k in OUTCOME_KINDS})


def _jobs(t: Tenant, stub, rec: Recorder, deadline: float, job_every_s: float, hold_s: float) -> None:
    spec = specs.train_spec(dataset=t.dataset, group_by="cohort", architecture="small_cnn",
                            epochs=LONG_TRAIN_EPOCHS, architecture_kwargs=DIGITS_CNN)
    create = lambda: rec.call("CreateJob", stub.CreateJob,  # noqa: E731 - a fresh request id: never a replay
                              jobs_pb2.CreateJobRequest(spec=spec, request_id=uuid.uuid4().hex))
    listed = lambda: rec.call("ListJobs", stub.ListJobs, jobs_pb2.ListJobsRequest(page_size=10))  # noqa: E731
    held: list[str] = []
    while time.monotonic() < deadline:
        cycle_end = min(deadline, time.monotonic() + job_every_s)
        reply, error = create()
        held = [reply.job.job_id] if reply is not None else []
        if error is not None and intended("CreateJob", error):
            t.exhausted += 1
        hold_end = min(deadline, time.monotonic() + hold_s)
        while held and time.monotonic() < hold_end:
            reply, error = create()  # over the quota while `held` is unfinished
            if error is not None and intended("CreateJob", error):
                t.exhausted += 1
            elif reply is not None:
                got, _ = rec.call("GetJob", stub.GetJob, jobs_pb2.GetJobRequest(job_id=held[-1]))
                if got is not None and got.job.state in UNFINISHED:
                    t.quota_not_enforced += 1
                held.append(reply.job.job_id)
            rec.call("GetJob", stub.GetJob, jobs_pb2.GetJobRequest(job_id=held[-1]))
            rec.call("WaitJob", stub.WaitJob, jobs_pb2.WaitJobRequest(job_id=held[-1], timeout=SHORT_WAIT))
            listed()
            time.sleep(0.2)
        for job_id in held:
            reply, _ = rec.call("CancelJob", stub.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id))
            if reply is not None:
                t.job_states[jobs_pb2.JobState.Name(reply.job.state)] += 1
        while time.monotonic() < cycle_end:
            listed()
            time.sleep(0.5)


def run_load(target: str, tenants: list[Tenant], seconds: float, *, batch: int = 16, report_most: int = 64,
             job_every_s: float = 6.0, hold_s: float = 1.5) -> dict:
    """Run the mixed load for `seconds`, then check every tenant's totals. Returns the figures
    and `failures` (empty when the load met its requirements)."""
    rows, rec = traffic_rows(), Recorder()
    channels = {t.name: open_channel(target, [], token=t.token) for t in tenants}
    try:
        for t in tenants:  # loads each tenant's model into its replica: counted, not timed
            stub, pending = serving_pb2_grpc.ServingServiceStub(channels[t.name]), queue.Queue()
            _predict_once(t, stub, rec, rows, batch, len(rows) // 2, pending)
            pending.put(None)
            _report(t, stub, rec, pending, report_most)
        rec.calls.clear()  # errors, if any, stay counted
        deadline = time.monotonic() + seconds
        threads = []
        for t in tenants:
            serving = serving_pb2_grpc.ServingServiceStub(channels[t.name])
            jobs = jobs_pb2_grpc.JobServiceStub(channels[t.name])
            pending = queue.Queue()
            threads += [threading.Thread(target=_predict, args=(t, serving, rec, rows, batch, deadline, pending)),
                        threading.Thread(target=_report, args=(t, serving, rec, pending, report_most)),
                        threading.Thread(target=_jobs, args=(t, jobs, rec, deadline, job_every_s, hold_s))]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        return _check(tenants, channels, rec, seconds, wall)
    finally:
        for channel in channels.values():
            channel.close()


def _tenant_checks(t: Tenant, stubs, rec: Recorder) -> tuple[dict, list[str]]:
    """This tenant's figures, and what disagrees: its totals against what it made and had
    acknowledged, its ids, its quota, jobs left unfinished."""
    serving, jobs = stubs
    reply, _ = rec.call("GetModelMetrics", serving.GetModelMetrics, serving_pb2.GetModelMetricsRequest(model=SERVED))
    left, _ = rec.call("ListJobs", jobs.ListJobs, jobs_pb2.ListJobsRequest(states=UNFINISHED))
    totals = {"predictions": reply.totals.predictions} if reply is not None else {}
    totals.update({f"outcomes_{k}": getattr(reply.totals, f"outcomes_{k}") for k in OUTCOME_KINDS if reply is not None})
    unfinished = len(left.jobs) if left is not None else None
    row = {"predicted": t.predicted, "outcomes_sent": t.outcomes_sent, "outcomes_unanswered": t.outcomes_unanswered,
           "acknowledged": dict(t.acknowledged), "totals": totals, "foreign_ids": t.foreign_ids,
           "exhausted": t.exhausted, "quota_not_enforced": t.quota_not_enforced,
           "job_states_after_cancel": dict(t.job_states), "unfinished_jobs_after": unfinished}
    joined, counted = t.acknowledged["joined"], totals.get("outcomes_joined")
    others = {k: v for k, v in totals.items() if k not in ("predictions", "outcomes_joined") and v}
    counted_predictions = totals.get("predictions")
    checks = [(counted_predictions == t.predicted, f"predictions counted {counted_predictions}, made {t.predicted}"),
              (counted == joined, f"outcomes joined counted {counted}, acknowledged {joined}"),
              (joined == t.outcomes_sent == t.predicted,
               f"acknowledged joined {joined}, sent {t.outcomes_sent}, predictions {t.predicted}"),
              (not others, f"other outcome totals {others}"),
              (t.foreign_ids == 0, f"{t.foreign_ids} prediction ids not of the form {t.name}/{SERVED}.<hex>"),
              (t.quota_not_enforced == 0, f"{t.quota_not_enforced} CreateJob accepted over {QUOTA_FIELD}"),
              (unfinished == 0, f"{unfinished} jobs still unfinished")]
    return row, [f"{t.name}: {why}" for ok, why in checks if not ok]


def _check(tenants: list[Tenant], channels: dict, rec: Recorder, seconds: float, wall: float) -> dict:
    per_tenant, failures = {}, []
    for t in tenants:
        stubs = serving_pb2_grpc.ServingServiceStub(channels[t.name]), jobs_pb2_grpc.JobServiceStub(channels[t.name])
        per_tenant[t.name], wrong = _tenant_checks(t, stubs, rec)
        failures += wrong
    exhausted = sum(t.exhausted for t in tenants)
    if not exhausted:
        failures.append(f"no RESOURCE_EXHAUSTED naming {QUOTA_FIELD}")
    failures += [f"{n} × {rpc} {code}: {rec.samples[(rpc, code)]}" for (rpc, code), n in sorted(rec.unintended.items())]
    rpcs = {}
    for rpc, calls in sorted(rec.calls.items()):
        ordered = sorted(s for s, _ in calls)
        rpcs[rpc] = {"calls": len(calls), "p50_ms": percentile(ordered, 0.5) * 1e3,
                     "p99_ms": percentile(ordered, 0.99) * 1e3, "max_ms": ordered[-1] * 1e3,
                     "codes": dict(Counter(code for _, code in calls))}
    return {"tenants": [t.name for t in tenants], "seconds": seconds, "wall_s": wall, "rpcs": rpcs,
            "per_tenant": per_tenant, "intended_exhausted": exhausted,
            "unintended": {f"{rpc} {code}": n for (rpc, code), n in sorted(rec.unintended.items())},
            "failures": failures}
