"""One request must never poison the monitor for everybody (issue #8, part 4).

Non-finite numbers are refused at the door, whole batch at a time; and a bad value that gets in
anyway (simulated here by writing into a model's buckets, as a bug would) stays with its model:
metrics() and the exporter keep answering, a save keeps every other model and the ledger, and a
load skips a damaged model's section and loads the rest."""

import json
import logging
import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from equiprune.service.errors import client_status
from equiprune.service.serving.monitor import ModelReference, Monitor, MonitorConfig, MonitorInputError
from equiprune.service.serving.monitor.exporter import MonitorExporter
from equiprune.service.serving.monitor.windows import F_CONFIDENCE_N, F_CONFIDENCE_SUM, F_CORRECT, F_OUTCOMES, FIELDS

T0 = 1_800_000_000.0
PROBS = (0.1, 0.7, 0.2)
NAN, INF = math.nan, math.inf


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


def _monitor(clock, *names):
    monitor = Monitor(MonitorConfig(min_count=5), clock=clock)
    for name in names:
        monitor.register_model(ModelReference(name, ("sex",), {"f": 0.9}, tolerance=0.05, num_classes=3))
    return monitor


def _predict(monitor, model, ids, probs=PROBS, group="f"):
    return monitor.record_predictions(model, [(pid, monitor.now(), {"sex": group}, 1, probs, None) for pid in ids])


def _evaluate(monitor, model, count, group="f"):
    monitor.record_evaluations(model, [(None, {"sex": group}, i % 3, 1, 0.8) for i in range(count)])


def _state(monitor):
    """Everything the monitor holds, except the moment it was read."""
    snapshot = monitor.snapshot()
    del snapshot["taken_at"]
    return snapshot, monitor.status()


def _poison(monitor, model, *, offset=F_CONFIDENCE_SUM, value=NAN, window=0, group=0):
    """What a bug could do: write a non-finite number straight into a used bucket of the model."""
    ring = monitor._by_name[model].rings[window]
    run = next(run for run in ring.slots if len(run) > group * FIELDS)
    run[group * FIELDS + offset] = value


def _numbers(metrics):
    """Every number that metrics() reports, unset ones left out."""
    for window in metrics.windows:
        for group in (*window.groups, window.overall):
            for value in vars(group).values():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    yield value
        for value in (window.max_excess_accuracy_gap, window.accuracy_parity_gap):
            if value is not None:
                yield value


def _scrape(monitor):
    registry = CollectorRegistry()
    MonitorExporter(monitor, registry)
    return generate_latest(registry).decode()


# --- nothing non-finite gets in -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    (NAN, NAN, NAN),  # what a softmax of overflowed logits gives
    (0.1, NAN, 0.2),  # min() and max() can step over a NaN that is not first
    (0.1, INF, 0.2),
    (0.1, 3.4e38, 0.2),  # finite, but its square is not
    (0.1, 0.7, -0.2),
    (0.1, 1.5, 0.2),
    (0.1, "0.7", 0.2),
    (),
])
def test_a_batch_with_bad_probabilities_is_refused_whole_and_changes_nothing(clock, bad):
    monitor = _monitor(clock, "m")
    _predict(monitor, "m", ["before"])
    before = _state(monitor)
    batch = [("ok", clock.t, {"sex": "f"}, 0, PROBS, None),  # valid, and still not counted
             ("bad", clock.t, {"sex": "new-group"}, 0, bad, None)]
    with pytest.raises(MonitorInputError) as refused:
        monitor.record_predictions("m", batch)
    assert refused.value.field == "instances[1].probabilities"
    assert client_status(refused.value).code == "INVALID_ARGUMENT"
    assert _state(monitor) == before  # totals, windows, groups, ledger: identical


def test_probabilities_off_by_float_rounding_are_accepted_and_clamped(clock):
    monitor = _monitor(clock, "m")
    _predict(monitor, "m", ["p"], probs=(0.0, 1.0 + 1e-7, -1e-8))
    f = monitor.metrics("m").window(300).group("f")
    assert f.mean_confidence == 1.0 and 0.0 <= f.mean_boundary_proxy <= 1.0


@pytest.mark.parametrize("item, field", [
    (("p", NAN, {"sex": "f"}, 1, PROBS, None), "predictions[0].time_s"),
    (("p", T0, {"sex": "f"}, 1.0, PROBS, None), "predictions[0].predicted_class"),
    (("p", T0, {"sex": "f"}, True, PROBS, None), "predictions[0].predicted_class"),
    (("p", T0, {"sex": "f"}, 1, PROBS, 0.5), "predictions[0].shadow_class"),
])
def test_times_and_classes_of_predictions_are_checked(clock, item, field):
    monitor = _monitor(clock, "m")
    with pytest.raises(MonitorInputError) as refused:
        monitor.record_predictions("m", [item])
    assert refused.value.field == field
    assert monitor.totals("m").predictions == 0


@pytest.mark.parametrize("record, field", [
    ((INF, {"sex": "f"}, 1, 1, 0.5), "records[1].time"),
    ((None, {"sex": "f"}, 1, 1, NAN), "records[1].confidence"),
    ((None, {"sex": "f"}, 1.5, 1, 0.5), "records[1].label"),
    ((None, {"sex": "f"}, 1, NAN, 0.5), "records[1].predicted_class"),
])
def test_a_batch_with_a_bad_evaluation_record_is_refused_whole(clock, record, field):
    monitor = _monitor(clock, "m")
    before = _state(monitor)
    with pytest.raises(MonitorInputError) as refused:
        monitor.record_evaluations("m", [(None, {"sex": "f"}, 1, 1, 0.5), record])
    assert refused.value.field == field
    assert _state(monitor) == before


def test_an_outcome_label_that_is_not_an_integer_is_invalid(clock):
    monitor = _monitor(clock, "m")
    _predict(monitor, "m", ["p0", "p1"])
    counts = monitor.record_outcomes([("p0", NAN), ("p1", "1"), ("gone", 0.5), (None, 1)])
    assert counts == {"joined": 0, "unknown": 0, "duplicate": 0, "late": 0, "invalid": 4}
    assert monitor.status().pending_predictions == 2  # a corrected label can still join
    assert monitor.record_outcomes([("p0", 1)])["joined"] == 1


@pytest.mark.parametrize("kwargs, field", [
    ({"reference_accuracy": {"f": NAN}}, "reference_accuracy[f]"),
    ({"reference_overall_accuracy": INF}, "reference_overall_accuracy"),
    ({"tolerance": NAN}, "tolerance"),
    ({"num_classes": 2.5}, "num_classes"),
    ({"reference_accuracy": {"f": True}}, "reference_accuracy[f]"),
])
def test_a_reference_that_is_not_finite_is_refused(kwargs, field):
    with pytest.raises(MonitorInputError) as refused:
        ModelReference("m", ("sex",), **kwargs)
    assert refused.value.field == field


# --- a bad value that got in stays with its model ------------------------------------------------


@pytest.fixture
def poisoned(clock):
    """'healthy' with 100 acknowledged evaluation records and a pending prediction; 'poisoned'
    with NaN and Inf written into its buckets."""
    monitor = _monitor(clock, "healthy", "poisoned")
    _evaluate(monitor, "healthy", 100)
    _predict(monitor, "healthy", ["healthy.pending"])
    _predict(monitor, "poisoned", [f"poisoned.{i}" for i in range(10)])
    monitor.record_outcomes([(f"poisoned.{i}", 1) for i in range(10)])
    _poison(monitor, "poisoned", offset=F_CONFIDENCE_SUM, value=NAN, window=0)
    _poison(monitor, "poisoned", offset=F_OUTCOMES, value=INF, window=1)
    _poison(monitor, "poisoned", offset=F_CORRECT, value=-INF, window=2)
    return monitor


def test_metrics_of_a_poisoned_model_do_not_raise_nor_report_non_finite_numbers(poisoned):
    metrics = poisoned.metrics("poisoned")
    assert all(math.isfinite(v) for v in _numbers(metrics))
    five, hour = metrics.window(300), metrics.window(3600)
    assert five.group("f").mean_confidence is None  # its sum is unknown: unset, not NaN
    assert (five.group("f").n, five.group("f").accuracy) == (10, 1.0)  # the rest of the bucket still counts
    assert hour.group("f").n == 0 and hour.group("f").accuracy is None
    assert poisoned.metrics("healthy").window(300).group("f").n == 100


def test_the_scrape_has_no_nan_or_inf_and_keeps_every_model(poisoned):
    text = _scrape(poisoned)
    assert "NaN" not in text and "Inf" not in text
    assert 'equiprune_group_predictions{group="f",model="poisoned",window="5m"} 10.0' in text
    assert 'equiprune_model_evaluation_records_total{model="healthy"} 100.0' in text


def test_saving_repairs_the_poisoned_model_and_keeps_the_others(poisoned, clock, tmp_path, caplog):
    path = tmp_path / "monitor.json"
    with caplog.at_level(logging.ERROR, logger="equiprune.service.serving.monitor"):
        poisoned.save(path)
    assert "'poisoned'" in caplog.text and "'healthy'" not in caplog.text
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    # repaired in the live state too: three values, their partners reset with them
    assert poisoned.status().repaired_values == {"healthy": 0, "poisoned": 3}
    five = poisoned.metrics("poisoned").window(300).group("f")
    assert (five.mean_confidence, five.n) == (None, 10)
    assert 'equiprune_model_repaired_values_total{model="poisoned"} 3.0' in _scrape(poisoned)

    clock.t += 60  # the restart
    restored = Monitor.load(path, clock=clock)
    assert restored.totals("healthy").evaluation_records == 100
    assert restored.metrics("healthy").window(300).group("f").n == 100
    assert restored.record_outcomes([("healthy.pending", 1)])["joined"] == 1
    assert restored.metrics("poisoned").window(300).group("f").n == 10
    assert restored.status().repaired_values["poisoned"] == 3  # a lifetime counter: saved


def test_a_model_that_cannot_be_repaired_is_left_out_of_the_round_and_the_others_are_saved(
        poisoned, clock, tmp_path, caplog):
    poisoned._by_name["poisoned"].totals["predictions"] = NAN  # not a window value: repair() cannot help
    path = tmp_path / "monitor.json"
    with caplog.at_level(logging.ERROR, logger="equiprune.service.serving.monitor"):
        poisoned.save(path)
        restored = Monitor.load(path, clock=clock)
    assert "'poisoned' still cannot be saved" in caplog.text
    assert "NaN" not in _scrape(poisoned)
    assert restored.models(include_unregistered=True) == ["healthy"]
    assert restored.totals("healthy").evaluation_records == 100
    assert restored.record_outcomes([("healthy.pending", 1)])["joined"] == 1


# --- loading a snapshot with one damaged model ---------------------------------------------------


def _damage_reference(section):
    del section["reference"]


def _damage_ring(section):
    section["rings"][0]["slots"][0][2][0] = "not a number"


def _damage_slot(section):
    section["rings"][0]["slots"][0][0] = 10_000  # a slot outside the ring


def _damage_totals(section):
    section["totals"]["predictions"] = -3


def _replace_section(section):
    section.clear()
    section["something"] = "else"


@pytest.mark.parametrize("damage", [_damage_reference, _damage_ring, _damage_slot, _damage_totals, _replace_section])
def test_a_snapshot_with_one_damaged_model_loads_the_others(clock, tmp_path, caplog, damage):
    monitor = _monitor(clock, "a", "b", "c")
    for name in ("a", "b", "c"):
        _evaluate(monitor, name, 20)
        _predict(monitor, name, [f"{name}.pending"])
    path = tmp_path / "monitor.json"
    monitor.save(path)
    data = json.loads(path.read_text())
    damage(data["models"][1])
    path.write_text(json.dumps(data))

    with caplog.at_level(logging.ERROR, logger="equiprune.service.serving.monitor"):
        restored = Monitor.load(path, clock=clock)
    assert "'b'" in caplog.text or "<unnamed>" in caplog.text
    assert restored.models(include_unregistered=True) == ["a", "c"]
    for name in ("a", "c"):
        assert restored.totals(name).evaluation_records == 20
        assert restored.metrics(name).window(300).group("f").n == 20
    # the pending predictions of the models after the damaged one still join their own model
    counts = restored.record_outcomes([("a.pending", 1), ("c.pending", 1), ("b.pending", 1)])
    assert counts == {"joined": 2, "unknown": 1, "duplicate": 0, "late": 0, "invalid": 0}
    assert restored.metrics("c").window(300).group("f").n == 21
    assert restored.metrics("a").window(300).group("f").n == 21
    # the damaged model starts afresh once it is registered again
    restored.register_model(ModelReference("b", ("sex",), {}))
    assert restored.totals("b").evaluation_records == 0


def test_non_finite_numbers_in_a_loaded_snapshot_are_repaired(clock, tmp_path):
    monitor = _monitor(clock, "a")
    _predict(monitor, "a", ["p0", "p1"])
    path = tmp_path / "monitor.json"
    monitor.save(path)
    data = json.loads(path.read_text())
    data["models"][0]["rings"][0]["slots"][0][2][F_CONFIDENCE_SUM] = NAN
    path.write_text(json.dumps(data))  # json writes NaN unless told not to, and reads it back

    restored = Monitor.load(path, clock=clock)
    f = restored.metrics("a").window(300).group("f")
    assert (f.predictions, f.mean_confidence) == (2, None)
    assert restored.status().repaired_values == {"a": 1}
    assert restored._by_name["a"].rings[0].slots[0][F_CONFIDENCE_N] == 0  # reset with its sum
    assert restored.metrics("a").window(3600).group("f").mean_confidence == pytest.approx(0.7)


def test_a_damaged_ledger_leaves_the_windows_loaded(clock, tmp_path, caplog):
    monitor = _monitor(clock, "a")
    _evaluate(monitor, "a", 5)
    _predict(monitor, "a", ["a.p0"])
    path = tmp_path / "monitor.json"
    monitor.save(path)
    data = json.loads(path.read_text())
    data["ledger"]["pending"]["time_s"] = []  # parallel lists of different lengths
    path.write_text(json.dumps(data))

    with caplog.at_level(logging.ERROR, logger="equiprune.service.serving.monitor"):
        restored = Monitor.load(path, clock=clock)
    assert "ledger is damaged" in caplog.text
    assert restored.totals("a").evaluation_records == 5
    assert restored.status().pending_predictions == 0
