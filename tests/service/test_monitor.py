"""The production monitor: joins of delayed outcomes, outcome accounting, sliding windows, the
per-group numbers against a hand computation, the memory bounds, and restarts."""

import json
import math
import threading

import pytest

from equiprune.service.errors import client_status
from equiprune.service.serving.monitor import (
    ModelReference,
    Monitor,
    MonitorConfig,
    MonitorGroupLimitError,
    MonitorInputError,
    UnknownModelError,
    make_prediction_id,
)
from equiprune.service.serving.monitor.windows import FIELDS, window_label

T0 = 1_800_000_000.0  # an arbitrary unix time, a multiple of every bucket width
PROBS = (0.1, 0.7, 0.2)  # predicted class 1; confidence 0.7; boundary proxy 1 − 0.54 = 0.46


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


def _monitor(clock, reference=None, **config):
    monitor = Monitor(MonitorConfig(**{"min_count": 5, **config}), clock=clock)
    monitor.register_model(reference or ModelReference(
        "m", ("sex",), {"f": 0.9, "m": 0.8}, reference_overall_accuracy=0.85, tolerance=0.02, num_classes=3))
    return monitor


def _predict(monitor, ids, group="f", cls=1, shadow=None, model="m", groups=None):
    items = [(pid, monitor.now(), groups or {"sex": group}, cls, PROBS, shadow) for pid in ids]
    return monitor.record_predictions(model, items)


def _group(monitor, window_s, group, now=None):
    return monitor.metrics("m", now).window(window_s).group(group)


# --- joining outcomes -----------------------------------------------------------------------


def test_delayed_out_of_order_outcomes_join_at_the_prediction_time(clock):
    monitor = _monitor(clock)
    _predict(monitor, ["early-0", "early-1", "early-2"])
    clock.t += 200
    _predict(monitor, ["late-0", "late-1"])
    clock.t += 50  # outcomes arrive after other predictions, in a different order
    counts = monitor.record_outcomes([("late-1", 1), ("early-2", 0), ("early-0", 1), ("late-0", 1), ("early-1", 1)])
    assert counts == {"joined": 5, "unknown": 0, "duplicate": 0, "late": 0, "invalid": 0}
    five = _group(monitor, 300, "f")
    assert (five.predictions, five.n, five.accuracy) == (5, 5, 4 / 5)

    # 330 s after the early predictions their bucket has left the 5-minute window, outcomes
    # included (they were counted at the prediction's time, not at arrival 250 s later).
    clock.t = T0 + 330
    five = _group(monitor, 300, "f")
    assert (five.predictions, five.n, five.accuracy) == (2, 2, 1.0)
    hour = _group(monitor, 3600, "f")
    assert (hour.predictions, hour.n) == (5, 5)


def test_every_outcome_counts_exactly_once(clock):
    monitor = _monitor(clock)
    _predict(monitor, ["old"])
    clock.t += 86400 + 10  # older than the longest window (1 d), younger than the 7-day TTL
    _predict(monitor, ["a", "b", "c", "d"])
    batch = [
        ("a", 1),  # joined
        ("a", 1),  # duplicate within the batch
        ("b", 3),  # invalid: the model has 3 classes (b stays pending)
        ("c", -1),  # invalid: negative
        ("nope", 0),  # unknown
        ("old", 1),  # late: joined to totals only
        ("d", 0),  # joined (wrong)
    ]
    counts = monitor.record_outcomes(batch)
    assert counts == {"joined": 2, "unknown": 1, "duplicate": 1, "late": 1, "invalid": 2}
    assert sum(counts.values()) == len(batch)
    again = monitor.record_outcomes([("a", 1), ("old", 1), ("d", 0), ("b", 2), ("c", 1)])
    # a, old, d were joined: duplicates. b and c were invalid before and still pending: joined now.
    assert again == {"joined": 2, "unknown": 0, "duplicate": 3, "late": 0, "invalid": 0}

    totals = monitor.totals("m")
    assert (totals.outcomes_joined, totals.outcomes_duplicate, totals.outcomes_late,
            totals.outcomes_invalid) == (4, 4, 1, 2)
    assert totals.outcomes_unknown == 0  # "nope" names no model: unattributed
    assert monitor.status().unattributed_outcomes["unknown"] == 1
    day = _group(monitor, 86400, "f")
    assert (day.n, day.predictions) == (4, 4)  # the late one is in the totals only
    assert day.accuracy == pytest.approx(2 / 4)  # a (1 ✓), d (0 ✗), b (2 ✗), c (1 ✓)


def test_unknown_outcomes_are_attributed_through_the_prediction_id(clock):
    monitor = _monitor(clock)
    pid = make_prediction_id("m")
    assert pid.startswith("m.") and pid != make_prediction_id("m")
    counts = monitor.record_outcomes([(pid, 1), ("other.123", 1)])
    assert counts["unknown"] == 2
    assert monitor.totals("m").outcomes_unknown == 1
    assert monitor.status().unattributed_outcomes["unknown"] == 1


def test_pending_eviction_makes_the_outcome_unknown(clock):
    monitor = _monitor(clock, max_pending=3)
    _predict(monitor, [f"p{i}" for i in range(5)])  # p0 and p1 are forgotten for room
    status = monitor.status()
    assert (status.pending_predictions, status.evicted_predictions) == (3, 2)
    assert monitor.record_outcomes([("p0", 1), ("p1", 1), ("p4", 1)]) == {
        "joined": 1, "unknown": 2, "duplicate": 0, "late": 0, "invalid": 0}
    # the window still counts all five predictions; only p4 has an outcome
    f = _group(monitor, 300, "f")
    assert (f.predictions, f.n) == (5, 1)


def test_pending_predictions_expire_after_the_ttl(clock):
    monitor = _monitor(clock, pending_ttl_s=600)
    _predict(monitor, ["p0", "p1"])
    clock.t += 601
    assert monitor.record_outcomes([("p0", 1)])["unknown"] == 1  # expired at lookup
    assert monitor.maintain() == 1  # p1 expires in the periodic tick
    assert monitor.status().pending_predictions == 0
    assert monitor.status().heartbeat_time == clock.t


def test_remembered_ids_are_bounded(clock):
    monitor = _monitor(clock, remembered_outcome_ids=2)
    _predict(monitor, ["p0", "p1", "p2"])
    monitor.record_outcomes([("p0", 1), ("p1", 1), ("p2", 1)])
    # p0 was forgotten (oldest of three joined): no longer a duplicate, now unknown
    assert monitor.record_outcomes([("p0", 1), ("p2", 1)]) == {
        "joined": 0, "unknown": 1, "duplicate": 1, "late": 0, "invalid": 0}


def test_a_prediction_id_is_recorded_once(clock):
    monitor = _monitor(clock)
    _predict(monitor, ["p0"])
    with pytest.raises(MonitorInputError, match="already recorded"):
        _predict(monitor, ["p1", "p0"])
    with pytest.raises(MonitorInputError, match="already recorded"):
        _predict(monitor, ["p2", "p2"])
    assert monitor.totals("m").predictions == 1


# --- windows ----------------------------------------------------------------------------------


def test_windows_roll(clock):
    monitor = _monitor(clock)
    _predict(monitor, [f"p{i}" for i in range(10)], shadow=1)
    monitor.record_outcomes([(f"p{i}", 1) for i in range(10)])
    assert _group(monitor, 300, "f").n == 10
    clock.t += 301  # past the 5-minute window, inside the hour
    five, hour = _group(monitor, 300, "f"), _group(monitor, 3600, "f")
    assert (five.predictions, five.n, five.accuracy, five.shadow_n) == (0, 0, None, 0)
    assert (hour.predictions, hour.n, hour.accuracy, hour.shadow_n) == (10, 10, 1.0, 10)
    clock.t = T0 + 3601
    assert _group(monitor, 3600, "f").n == 0 and _group(monitor, 86400, "f").n == 10
    clock.t = T0 + 86401
    assert _group(monitor, 86400, "f").n == 0
    assert monitor.totals("m").outcomes_joined == 10  # lifetime totals never roll


def test_window_edge_is_one_bucket_wide(clock):
    # 5 minutes in 60 buckets of 5 s: an event leaves the window when its bucket does.
    monitor = _monitor(clock)
    clock.t = T0 + 4.9  # inside the bucket [T0, T0 + 5)
    _predict(monitor, ["p"])
    assert _group(monitor, 300, "f", now=T0 + 299.9).predictions == 1
    assert _group(monitor, 300, "f", now=T0 + 300.0).predictions == 0  # 295.1 s after the event


def test_window_labels():
    assert [window_label(s) for s in (300, 3600, 86400, 172800, 90, 7200, 45)] == [
        "5m", "1h", "1d", "2d", "90s", "2h", "45s"]


def test_buckets_stay_bounded_whatever_the_traffic(clock):
    monitor = _monitor(clock, buckets_per_window=12)
    for step in range(2000):  # three days of traffic, one prediction every ~2 minutes
        clock.t = T0 + step * 130
        _predict(monitor, [f"p{step}"], group="fm"[step % 2])
    model = monitor._by_name["m"]
    for ring in model.rings:
        assert len(ring.slots) == len(ring.starts) == 12
        assert all(len(run) <= 2 * FIELDS for run in ring.slots)
    assert len(model.group_names) == 2
    day = monitor.metrics("m").window(86400)
    assert sum(g.predictions for g in day.groups) < 2000


def test_groups_per_model_are_bounded(clock):
    monitor = _monitor(clock, max_groups_per_model=2)
    _predict(monitor, ["p0"], group="f")
    _predict(monitor, ["p1"], group="m")
    with pytest.raises(MonitorGroupLimitError) as refused:
        _predict(monitor, ["p2"], group="x")
    assert client_status(refused.value).code == "RESOURCE_EXHAUSTED"


# --- the numbers --------------------------------------------------------------------------------


def _wilson(k, n, z=1.959963984540054):
    # written out independently of the engine's implementation
    p = k / n
    centre = (2 * n * p + z**2) / (2 * (n + z**2))
    half = z * math.sqrt(z**2 + 4 * n * p * (1 - p)) / (2 * (n + z**2))
    return max(0.0, centre - half), min(1.0, centre + half)


COUNTS = {"a": (40, 30), "b": (50, 45), "c": (10, 2)}  # group: (n, correct); c is below min_count
REFERENCE = {"a": 0.9, "b": 0.95, "c": 0.8}


def _fill(monitor):
    for group, (n, correct) in COUNTS.items():
        ids = [f"{group}{i}" for i in range(n)]
        _predict(monitor, ids, groups={"g": group}, cls=1)
        monitor.record_outcomes([(p, 1 if i < correct else 2) for i, p in enumerate(ids)])


@pytest.mark.parametrize("overall_reference", [0.92, None])
def test_group_numbers_match_a_hand_computation(clock, overall_reference):
    monitor = _monitor(clock, ModelReference("m", ("g",), REFERENCE, overall_reference, 0.02, 3), min_count=30)
    _fill(monitor)
    window = monitor.metrics("m").window(300)

    n_all = sum(n for n, _ in COUNTS.values())
    acc_all = sum(c for _, c in COUNTS.values()) / n_all
    if overall_reference is None:  # n-weighted mean of the group references
        overall_reference = sum(REFERENCE[g] * n for g, (n, _) in COUNTS.items()) / n_all
    overall_drop = overall_reference - acc_all
    assert window.overall.n == n_all and window.overall.group == ""
    assert window.overall.accuracy == pytest.approx(acc_all)
    assert window.overall.reference_accuracy == pytest.approx(overall_reference)
    assert window.overall.accuracy_drop == pytest.approx(overall_drop)
    assert (window.overall.accuracy_ci_low, window.overall.accuracy_ci_high) == pytest.approx(
        _wilson(sum(c for _, c in COUNTS.values()), n_all))

    psi = {}
    for group, (n, correct) in COUNTS.items():
        g = window.group(group)
        acc = correct / n
        psi[group] = (REFERENCE[group] - acc) - overall_drop
        assert (g.n, g.predictions) == (n, n)
        assert g.accuracy == pytest.approx(acc) and g.error_rate == pytest.approx(1 - acc)
        assert (g.accuracy_ci_low, g.accuracy_ci_high) == pytest.approx(_wilson(correct, n))
        assert g.accuracy_drop == pytest.approx(REFERENCE[group] - acc)
        assert g.excess_accuracy_gap == pytest.approx(psi[group])
        assert g.mean_confidence == pytest.approx(0.7) and g.mean_boundary_proxy == pytest.approx(0.46)
        assert g.sufficient_data == (n >= 30)

    # c has the largest ψ but too few outcomes: it is shown, not judged
    assert psi["c"] > max(psi["a"], psi["b"]) and not window.group("c").sufficient_data
    top = max(("a", "b"), key=psi.get)
    assert window.max_excess_accuracy_gap_group == top
    assert window.max_excess_accuracy_gap == pytest.approx(psi[top])
    assert window.accuracy_parity_gap == pytest.approx(45 / 50 - 30 / 40)


def test_without_sufficient_groups_nothing_is_judged(clock):
    monitor = _monitor(clock, min_count=100)
    _predict(monitor, ["p0", "p1"])
    monitor.record_outcomes([("p0", 1), ("p1", 0)])
    window = monitor.metrics("m").window(300)
    assert window.max_excess_accuracy_gap is None and window.max_excess_accuracy_gap_group == ""
    assert window.accuracy_parity_gap is None
    assert window.group("f").excess_accuracy_gap is not None  # computed and shown, not judged


def test_shadow_agreement(clock):
    monitor = _monitor(clock)
    _predict(monitor, ["p0", "p1", "p2"], shadow=1)
    _predict(monitor, ["p3"], shadow=0)
    _predict(monitor, ["p4"], shadow=None)
    f = _group(monitor, 300, "f")
    assert (f.predictions, f.shadow_n, f.shadow_agreement) == (5, 4, 0.75)


def test_referenced_groups_without_traffic_are_listed(clock):
    monitor = _monitor(clock)
    window = monitor.metrics("m").window(300)
    assert [g.group for g in window.groups] == ["f", "m"]
    assert window.group("m").predictions == 0 and window.group("m").accuracy is None
    assert window.group("m").reference_accuracy == 0.8


def test_intersection_groups_are_named_like_the_engine(clock):
    monitor = _monitor(clock, ModelReference("m", ("race", "sex"), {}))
    _predict(monitor, ["p0"], groups={"sex": "female", "race": "Black", "age": "30"})
    assert [g.group for g in monitor.metrics("m").window(300).groups] == ["Black&female"]
    assert monitor.group_of("m", {"race": "White", "sex": "male"}) == "White&male"


# --- input errors ---------------------------------------------------------------------------------


def test_a_missing_group_attribute_refuses_the_whole_batch(clock):
    monitor = _monitor(clock, ModelReference("m", ("race", "sex"), {}))
    items = [("p0", clock.t, {"race": "a", "sex": "f"}, 1, PROBS, None),
             ("p1", clock.t, {"race": "b"}, 1, PROBS, None)]
    with pytest.raises(ValueError) as refused:
        monitor.record_predictions("m", items)
    assert refused.value.field == "instances[1].groups.sex"
    status = client_status(refused.value)
    assert status.code == "INVALID_ARGUMENT" and "groups.sex" in status.message
    assert monitor.totals("m").predictions == 0 and monitor.status().pending_predictions == 0
    assert monitor.metrics("m").window(300).groups == ()  # not even the valid item's group
    with pytest.raises(MonitorInputError, match="race"):
        monitor.group_of("m", {"sex": "f"})


def test_bad_predictions_are_refused(clock):
    monitor = _monitor(clock)
    with pytest.raises(MonitorInputError) as refused:
        monitor.record_predictions("m", [("p", clock.t, {"sex": "f"}, 3, (0.2, 0.2, 0.2, 0.4), None)])
    assert refused.value.field == "predictions[0].predicted_class"  # the model has 3 classes
    with pytest.raises(UnknownModelError):
        _predict(monitor, ["p"], model="nobody")


def test_a_bad_reference_names_the_field():
    with pytest.raises(MonitorInputError) as refused:
        ModelReference("m", ("sex",), {"f": 1.5})
    assert refused.value.field == "reference_accuracy[f]"
    with pytest.raises(MonitorInputError) as refused:
        ModelReference("m", ("sex",), tolerance=1.0)
    assert refused.value.field == "tolerance"


# --- evaluation records -----------------------------------------------------------------------------


def test_evaluation_records(clock):
    monitor = _monitor(clock)
    result = monitor.record_evaluations("m", [
        (None, {"sex": "f"}, 1, 1, 0.9),
        (clock.t - 100, {"sex": "f"}, 2, 1, None),
        (clock.t - 86400 - 1, {"sex": "f"}, 1, 1, 0.5),  # older than every window
        (clock.t - 1000, {"sex": "m"}, 0, 0, 0.6),  # outside 5 m, inside 1 h
    ])
    assert result == {"recorded": 3, "late": 1}
    assert monitor.totals("m").evaluation_records == 4 and monitor.totals("m").predictions == 0
    f = _group(monitor, 300, "f")
    assert (f.predictions, f.n, f.accuracy, f.mean_confidence, f.mean_boundary_proxy) == (2, 2, 0.5, 0.9, None)
    assert _group(monitor, 300, "m").n == 0 and _group(monitor, 3600, "m").n == 1

    with pytest.raises(MonitorInputError) as refused:
        monitor.record_evaluations("m", [(None, {"sex": "f"}, 1, 1, None), (None, {"sex": "f"}, 7, 1, None)])
    assert refused.value.field == "records[1].label"
    with pytest.raises(MonitorInputError) as refused:
        monitor.record_evaluations("m", [(None, {"sex": "f"}, 1, 1, 1.5)])
    assert refused.value.field == "records[0].confidence"
    with pytest.raises(MonitorInputError) as refused:
        monitor.record_evaluations("m", [(None, {}, 1, 1, None)])
    assert refused.value.field == "records[0].groups.sex"
    assert monitor.totals("m").evaluation_records == 4


# --- models --------------------------------------------------------------------------------------------


def test_unregistered_models_keep_history_and_joins(clock):
    monitor = _monitor(clock)
    _predict(monitor, ["p0", "p1"])
    monitor.unregister_model("m")
    assert monitor.models() == [] and monitor.models(include_unregistered=True) == ["m"]
    with pytest.raises(UnknownModelError, match="not deployed"):
        _predict(monitor, ["p2"])
    assert monitor.record_outcomes([("p0", 1)])["joined"] == 1
    metrics = monitor.metrics("m")
    assert not metrics.registered and metrics.window(300).group("f").n == 1

    monitor.register_model(ModelReference("m", ("sex",), {"f": 0.7}, tolerance=0.05, num_classes=3))
    metrics = monitor.metrics("m")
    assert metrics.registered and metrics.totals.predictions == 2 and metrics.totals.outcomes_joined == 1
    assert metrics.reference.tolerance == 0.05 and metrics.window(300).group("f").reference_accuracy == 0.7
    with pytest.raises(UnknownModelError):
        monitor.metrics("never")


# --- restarts ---------------------------------------------------------------------------------------------


def test_snapshot_round_trip_keeps_metrics_and_pending_joins(clock, tmp_path):
    monitor = _monitor(clock)
    _predict(monitor, [f"p{i}" for i in range(6)], shadow=1)
    _predict(monitor, ["q0"], group="m", shadow=2)
    monitor.record_outcomes([("p0", 1), ("p1", 2), ("nobody", 1)])
    monitor.record_evaluations("m", [(None, {"sex": "m"}, 0, 0, 0.4)])
    before = monitor.metrics("m")

    path = tmp_path / "state" / "monitor.json"
    monitor.save(path)
    assert json.loads(path.read_text())["format"] == "equiprune-monitor"
    assert [p.name for p in path.parent.iterdir()] == ["monitor.json"]  # no temporary left over
    assert monitor.status().last_persist_time == clock.t

    clock.t += 60  # the restart
    restored = Monitor.load(path, clock=clock)
    assert restored.config == monitor.config
    assert restored.metrics("m", now=T0) == before
    assert restored.status().pending_predictions == 5 and restored.status().last_persist_time == T0
    assert restored.status().unattributed_outcomes["unknown"] == 1
    # a prediction made before the restart joins its outcome after it; a duplicate stays one
    assert restored.record_outcomes([("p2", 1), ("q0", 0), ("p0", 1)]) == {
        "joined": 2, "unknown": 0, "duplicate": 1, "late": 0, "invalid": 0}
    f = restored.metrics("m").window(300).group("f")
    assert (f.n, f.accuracy, f.shadow_n) == (3, 2 / 3, 6)
    assert restored.totals("m").outcomes_joined == 4


def test_restore_refuses_other_files():
    with pytest.raises(ValueError, match="snapshot"):
        Monitor.restore({"format": "something-else"})


# --- concurrency ------------------------------------------------------------------------------------------


def test_concurrent_callers_lose_nothing(clock):
    monitor = _monitor(clock)

    def work(worker):
        for batch in range(20):
            ids = [f"w{worker}-{batch}-{i}" for i in range(50)]
            _predict(monitor, ids)
            monitor.record_outcomes([(p, 1) for p in ids])
            monitor.metrics("m")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals = monitor.totals("m")
    assert totals.predictions == totals.outcomes_joined == 4 * 20 * 50
    assert _group(monitor, 300, "f").n == 4000


def test_a_new_config_at_load_keeps_the_windows_it_shares(clock, tmp_path):
    monitor = _monitor(clock)
    _predict(monitor, [f"p{i}" for i in range(4)])
    monitor.record_outcomes([("p0", 1)])
    monitor.save(tmp_path / "monitor.json")

    config = MonitorConfig(windows_s=(3600, 7200), min_count=1, max_pending=2)
    restored = Monitor.load(tmp_path / "monitor.json", clock=clock, config=config)
    assert restored.config == config
    metrics = restored.metrics("m")
    assert [w.window_seconds for w in metrics.windows] == [3600, 7200]
    assert (metrics.window(3600).group("f").predictions, metrics.window(3600).group("f").n) == (4, 1)
    assert metrics.window(7200).group("f").predictions == 0  # a new window starts empty
    assert metrics.window(3600).group("f").sufficient_data  # the new min_count applies
    assert restored.status().pending_predictions == 2  # the smaller bound forgot the oldest
    assert restored.record_outcomes([("p1", 1), ("p3", 1)])["joined"] == 1
