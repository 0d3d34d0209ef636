"""The serving plane: deploy, predict, outcomes, evaluations, metrics — protocol-neutral.

The monitor and the model server are reached through `monitor` and `models`: objects whose
async methods are theirs (Serve handle adapters in the service, fakes in unit tests). A
served model is a JSON-able dict, so the monitor persists its registry as it is. Every
request rule (names, fractions, shapes, counts) lives here, naming the request's field.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from equiprune.service.errors import FailedPrecondition, InvalidArgument, NotFound, ServiceError, refusal_of
from equiprune.service.jobs.plane import job_id_in
from equiprune.service.serving.monitor.config import OUTCOME_RESULTS, make_prediction_id
from equiprune.service.serving.monitor.refusals import is_class_index
from equiprune.service.artifacts.validation import artifact_of_kind

NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
MAX_INSTANCES = 1024
MAX_OUTCOMES = 100_000
MAX_PREDICTION_ID = 128  # ids are "<model ≤ 63>.<24 hex>"
MAX_INPUT_DIMS = 8
MAX_INSTANCE_VALUES = 2**22  # 16 MiB of float32 per instance; a Predict message is at most 32 MiB
FLOAT32_MAX = 3.4028234663852886e38
MAX_SERVED_CLASSES = 10_000  # a reply is rows × classes float32s: bounded per frame (serving.py)
DEFAULT_TOLERANCE = 0.01
SERVED_CACHE_S = 2.0


@dataclass(frozen=True)
class DeployRequest:
    name: str
    artifact_id: str
    group_by: tuple[str, ...]
    shadow_artifact_id: str = ""
    tolerance: float | None = None  # None: DEFAULT_TOLERANCE
    reference_job_id: str = ""
    reference_accuracy: dict[str, float] = field(default_factory=dict)
    reference_overall_accuracy: float | None = None
    input_shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class Instance:
    values: Sequence[float]
    groups: dict[str, str]


@dataclass(frozen=True)
class Prediction:
    prediction_id: str
    predicted_class: int
    probabilities: list[float]
    shadow_class: int | None = None


@dataclass(frozen=True)
class EvaluationRecord:
    time: float | None  # None: now
    groups: dict[str, str]
    label: int
    predicted_class: int
    confidence: float | None = None


class ServingPlane:
    def __init__(self, artifacts, sandbox, jobs, monitor, models, probe_timeout_s: float) -> None:
        self.artifacts, self.sandbox, self.jobs = artifacts, sandbox, jobs
        self.monitor, self.models, self.probe_timeout_s = monitor, models, probe_timeout_s
        self._served_cache: dict[str, tuple[float, dict]] = {}

    # Served models are per tenant: the name a client uses is its own, and the monitor keeps
    # each under "<tenant>/<name>" (`_key`), so two tenants may both serve "digits" and neither
    # can see, call, report on or learn of the other's. Prediction ids carry the key.

    # ------------------------------------------------------------------ registry

    async def deploy(self, caller, request: DeployRequest) -> dict:
        served = await asyncio.to_thread(self._checked, caller, request)
        if request.reference_job_id:
            job = await self.jobs.get(caller, request.reference_job_id, field="reference_job_id")
            served = await asyncio.to_thread(self._with_job_reference, served, job)
        if not served["reference_accuracy"]:
            raise InvalidArgument("give reference_job_id (a job with a dense report) or reference_accuracy",
                                  field="reference_job_id")
        if not served["input_shape"]:
            raise InvalidArgument("required without a reference job: the shape of one instance", field="input_shape")
        served = await asyncio.to_thread(self._probed, served)
        key = _key(caller, request.name)
        self._served_cache.pop(key, None)
        async with _named(request.name):
            return _public(await self.monitor.deploy({**served, "name": key}))

    async def undeploy(self, caller, name: str) -> None:
        key = _key(caller, name, "name")
        async with _named(name, "name"):
            await self.monitor.undeploy(key)
        self._served_cache.pop(key, None)

    async def list_served(self, caller) -> list[dict]:
        prefix = caller.tenant + "/"
        return [_public(m) for m in await self.monitor.list_served() if m["name"].startswith(prefix)]

    def _checked(self, caller, r: DeployRequest) -> dict:
        if not NAME.match(r.name):
            raise InvalidArgument("1-63 characters of a-z, 0-9 and -, starting with a letter", field="name")
        artifact_of_kind(self.artifacts, r.artifact_id, "model", "artifact_id", caller.tenant)
        if r.shadow_artifact_id:
            artifact_of_kind(self.artifacts, r.shadow_artifact_id, "model", "shadow_artifact_id", caller.tenant)
        if not r.group_by:
            raise InvalidArgument("name at least one group attribute", field="group_by")
        tolerance = DEFAULT_TOLERANCE if r.tolerance is None else r.tolerance
        if not 0 <= tolerance < 1:
            raise InvalidArgument(f"must be in [0, 1), got {tolerance}", field="tolerance")
        if r.reference_job_id and r.reference_accuracy:
            raise InvalidArgument("give reference_job_id or reference_accuracy, not both", field="reference_accuracy")
        if r.reference_job_id:
            job_id_in(r.reference_job_id, "reference_job_id")
        for group, accuracy in r.reference_accuracy.items():
            _check_fraction(accuracy, f"reference_accuracy[{group}]")
        if r.reference_overall_accuracy is not None:
            _check_fraction(r.reference_overall_accuracy, "reference_overall_accuracy")
        if any(d < 1 for d in r.input_shape):
            raise InvalidArgument("every dimension must be at least 1", field="input_shape")
        if len(r.input_shape) > MAX_INPUT_DIMS or math.prod(r.input_shape) > MAX_INSTANCE_VALUES:
            raise InvalidArgument(f"at most {MAX_INPUT_DIMS} dimensions and {MAX_INSTANCE_VALUES} values per instance",
                                  field="input_shape")
        return {
            "name": r.name, "artifact_id": r.artifact_id, "shadow_artifact_id": r.shadow_artifact_id,
            "group_by": list(r.group_by), "reference_accuracy": dict(r.reference_accuracy),
            "reference_overall_accuracy": r.reference_overall_accuracy, "tolerance": tolerance,
            "input_shape": list(r.input_shape), "num_classes": None, "create_time": time.time(),
        }

    def _with_job_reference(self, served: dict, job) -> dict:
        """The reference from a finished job's dense report (evaluation split, else training)."""
        if job.state != "succeeded" or not job.result:
            raise FailedPrecondition(f"job {job.job_id} is {job.state}; a reference needs a succeeded job",
                                     field="reference_job_id")
        job_groups = list(job.spec["data"]["group_by"])
        if job_groups != served["group_by"]:
            raise FailedPrecondition(f"the reference job grouped by {job_groups}, not {served['group_by']}",
                                     field="group_by")
        dense = [r for r in job.result.get("reports", []) if r["stage"] == "dense"]
        if not dense:
            raise FailedPrecondition(f"job {job.job_id} has no dense report", field="reference_job_id")
        chosen = next((r for r in dense if r["split"] not in ("", "train")), dense[0])["report"]
        dataset = self.artifacts.get(job.spec["dataset"]).description
        return {
            **served,
            "reference_accuracy": {g["group"]: g["accuracy"] for g in chosen["groups"] if g.get("accuracy") is not None},
            "reference_overall_accuracy": chosen["overall"]["accuracy"],
            "reference_job_id": job.job_id,
            "input_shape": served["input_shape"] or [int(d) for d in dataset.get("sample_shape", "").split("x") if d],
            "num_classes": int(dataset["classes"]) if dataset.get("classes") else None,
        }

    def _probed(self, served: dict) -> dict:
        """Run the model (and its shadow) on one zero instance of the declared shape, in the
        sandbox with the serving limits: a shape the model cannot take is refused now, not at
        the first Predict; then the output widths must agree with each other and the data."""
        widths = {}
        for key in ("artifact_id", "shadow_artifact_id"):
            if served.get(key):
                try:
                    widths[key] = self.sandbox.run("probe", {"input_shape": served["input_shape"]},
                                                   {"model": self.artifacts.local_path(served[key])},
                                                   purpose="serving", timeout_s=self.probe_timeout_s).get("outputs")
                except ServiceError as refusal:
                    # A shape the model cannot take names input_shape; a model that will not load, the
                    # model. A damaged stored model (DATA_LOSS) already says which artifact it is.
                    if refusal.field == "input_shape" or refusal.code in ("INTERNAL", "DATA_LOSS"):
                        raise
                    raise type(refusal)(refusal.message, field=key) from None
        for key, value in widths.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SERVED_CLASSES:
                raise FailedPrecondition(f"the model has {value} outputs; a served model may have 1 to "
                                         f"{MAX_SERVED_CLASSES}", field=key)
        width = widths["artifact_id"]
        if "shadow_artifact_id" in widths and widths["shadow_artifact_id"] != width:
            raise FailedPrecondition(f"the shadow model has {widths['shadow_artifact_id']} outputs, the model {width}",
                                     field="shadow_artifact_id")
        if served.get("num_classes") is not None and served["num_classes"] > width:
            raise FailedPrecondition(f"the model has {width} outputs but its reference data has "
                                     f"{served['num_classes']} classes", field="artifact_id")
        return {**served, "num_classes": served.get("num_classes") or width}

    # ------------------------------------------------------------------ traffic

    async def served(self, key: str) -> dict:
        """The served model under `key`, cached for SERVED_CACHE_S: a Predict then costs two hops,
        not three. A deploy or undeploy through another replica shows here within that time."""
        now = time.monotonic()
        cached = self._served_cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        served = await self.monitor.served(key)
        self._served_cache[key] = (now + SERVED_CACHE_S, served)
        return served

    async def predict(self, caller, model: str, instances: list[Instance]) -> list[Prediction]:
        """Run the model (and its shadow, on the same inputs) and record every prediction with
        its groups, so outcomes reported later can be judged per group."""
        key = _key(caller, model)
        async with _named(model):
            served = await self.served(key)
        inputs, groups = _checked_instances(instances, served)
        calls = [self.models.predict(served["artifact_id"], inputs, served["input_shape"])]
        if served.get("shadow_artifact_id"):
            calls.append(self.models.predict(served["shadow_artifact_id"], inputs, served["input_shape"]))
        outputs = await asyncio.gather(*calls)
        shadow = outputs[1] if len(outputs) > 1 else None
        predictions = [Prediction(make_prediction_id(key), _argmax(probs), probs,
                                  _argmax(shadow[i]) if shadow is not None else None)
                       for i, probs in enumerate(outputs[0])]
        now = time.time()
        await self.monitor.record_predictions(key, [
            (p.prediction_id, now, g, p.predicted_class, p.probabilities, p.shadow_class)
            for p, g in zip(predictions, groups)])
        return predictions

    async def report_outcomes(self, caller, outcomes: list[tuple[str, int]]) -> dict:
        """Join labels to the caller's predictions. An id of another tenant's prediction is
        counted as unknown (or invalid, for a label that is not a class index) exactly as an
        id nobody issued, and never reaches the monitor: it cannot touch their counts."""
        check_count(len(outcomes), MAX_OUTCOMES, "outcomes")
        prefix = caller.tenant + "/"
        own, foreign = [], dict.fromkeys(OUTCOME_RESULTS, 0)
        for i, (prediction_id, label) in enumerate(outcomes):
            if not prediction_id or len(prediction_id) > MAX_PREDICTION_ID:
                raise InvalidArgument(f"required, at most {MAX_PREDICTION_ID} characters",
                                      field=f"outcomes[{i}].prediction_id")
            if prediction_id.startswith(prefix):
                own.append((prediction_id, label))
            else:
                foreign["unknown" if is_class_index(label) else "invalid"] += 1
        counts = await self.monitor.record_outcomes(own) if own else dict.fromkeys(OUTCOME_RESULTS, 0)
        return {k: counts.get(k, 0) + foreign[k] for k in OUTCOME_RESULTS}

    async def record_evaluations(self, caller, model: str, records: list[EvaluationRecord]) -> dict:
        if not model:
            raise InvalidArgument("required", field="model")
        check_count(len(records), MAX_OUTCOMES, "records")
        now = time.time()
        for i, r in enumerate(records):
            if r.confidence is not None and not 0 <= r.confidence <= 1:
                raise InvalidArgument(f"must be in [0, 1], got {r.confidence}", field=f"records[{i}].confidence")
        async with _named(model):
            return await self.monitor.record_evaluations(_key(caller, model), [
                (r.time if r.time is not None else now, r.groups, r.label, r.predicted_class, r.confidence)
                for r in records])

    async def metrics(self, caller, model: str) -> dict:
        if not model:
            raise InvalidArgument("required", field="model")
        async with _named(model):
            answer = await self.monitor.metrics(_key(caller, model))
        return {**answer, "served": _public(answer["served"]) if answer.get("served") else answer.get("served")}


def _key(caller, name: str, field: str = "model") -> str:
    """The monitor's key of the caller's served model `name`."""
    if not NAME.match(name or ""):
        if not name:
            raise InvalidArgument("required", field=field)
        raise NotFound(f"no served model named {name!r}", field=field)
    return f"{caller.tenant}/{name}"


def _public(served: dict) -> dict:
    """A served model as its tenant knows it: the name without the tenant's prefix."""
    return {**served, "name": served["name"].partition("/")[2] or served["name"]}


class _named:
    """Re-word a monitor refusal about a key ("acme/digits") as about the client's name."""

    def __init__(self, name: str, field: str | None = None) -> None:
        self.name, self.field = name, field

    async def __aenter__(self):
        return self

    async def __aexit__(self, kind, exc, tb):
        refusal = refusal_of(exc) if exc is not None else None
        if refusal is not None and "/" in refusal.message:
            message = re.sub(r"'[a-z][a-z0-9-]{0,31}/([a-z][a-z0-9-]{0,62})'", r"'\1'", refusal.message)
            raise type(refusal)(message, field=self.field or refusal.field) from None
        return False


def check_count(count: int, limit: int, field: str) -> None:
    """A request's list size, checked before anything is built from it (the wire calls it
    before converting, the plane again for callers that are not the wire)."""
    if not 1 <= count <= limit:
        raise InvalidArgument(f"send 1 to {limit} {field}, got {count}", field=field)


def _checked_instances(instances: list[Instance], served: dict) -> tuple[list[list[float]], list[dict]]:
    check_count(len(instances), MAX_INSTANCES, "instances")
    size = math.prod(served["input_shape"])
    inputs, groups = [], []
    for i, instance in enumerate(instances):
        if len(instance.values) != size:
            raise InvalidArgument(f"expected {size} values (shape {served['input_shape']}), got {len(instance.values)}",
                                  field=f"instances[{i}].values")
        if not all(math.isfinite(v) and -FLOAT32_MAX <= v <= FLOAT32_MAX for v in instance.values):
            raise InvalidArgument("values must be finite float32 numbers (|v| ≤ 3.4e38)", field=f"instances[{i}].values")
        for attribute in served["group_by"]:
            if not instance.groups.get(attribute):
                raise InvalidArgument(f"the model is monitored by {attribute!r}; give its value",
                                      field=f"instances[{i}].groups.{attribute}")
        inputs.append(list(instance.values))
        groups.append(dict(instance.groups))
    return inputs, groups


def _check_fraction(value: float, field: str) -> None:
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise InvalidArgument(f"must be a fraction in [0, 1], got {value}", field=field)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)

