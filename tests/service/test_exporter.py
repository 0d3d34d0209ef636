"""The Prometheus exporter: names, labels and values of a scrape equal the monitor's numbers."""

import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from equiprune.service.serving.monitor import ModelReference, Monitor, MonitorConfig, window_label
from equiprune.service.serving.monitor.exporter import GROUP_WINDOW_GAUGES, MonitorExporter, serve_metrics

T0 = 1_800_000_000.0
PROBS = (0.1, 0.7, 0.2)

# Every name docs/monitoring.md promises (and the alert rules use).
GAUGES = {name for name, _, _ in GROUP_WINDOW_GAUGES} | {
    "equiprune_group_reference_accuracy_ratio",
    "equiprune_model_max_excess_accuracy_gap_ratio",
    "equiprune_model_accuracy_parity_gap_ratio",
    "equiprune_model_tolerance_ratio",
    "equiprune_monitor_heartbeat_timestamp_seconds",
    "equiprune_monitor_last_persist_timestamp_seconds",
    "equiprune_monitor_pending_predictions",
}
COUNTERS = {
    "equiprune_model_predictions",
    "equiprune_model_outcomes",
    "equiprune_model_evaluation_records",
    "equiprune_model_repaired_values",
    "equiprune_monitor_evicted_predictions",
    "equiprune_monitor_unattributed_outcomes",
}


class Clock:
    t = T0

    def __call__(self):
        return self.t


@pytest.fixture
def monitor(tmp_path):
    clock = Clock()
    monitor = Monitor(MonitorConfig(min_count=3), clock=clock)
    monitor.register_model(ModelReference("cnn", ("race", "sex"), {"a&f": 0.9, "b&m": 0.8},
                                          reference_overall_accuracy=0.85, tolerance=0.03, num_classes=3))
    monitor.register_model(ModelReference("gone", ("sex",), {}))
    groups = [{"race": "a", "sex": "f"}, {"race": "b", "sex": "m"}]
    items = [(f"cnn.secret{i}", clock.t - 10 * i, groups[i % 2], 1, PROBS, 1 if i % 3 else 0) for i in range(40)]
    monitor.record_predictions("cnn", items)
    monitor.record_outcomes([(f"cnn.secret{i}", 1 if i % 4 else 2) for i in range(30)] + [("cnn.secret0", 1)])
    monitor.record_evaluations("cnn", [(None, groups[0], 0, 0, 0.8)])
    monitor.record_predictions("gone", [("gone.x", clock.t, {"sex": "f"}, 0, (1.0,), None)])
    monitor.unregister_model("gone")
    monitor.save(tmp_path / "monitor.json")
    monitor.maintain()
    return monitor


def _scrape(monitor):
    registry = CollectorRegistry()
    MonitorExporter(monitor, registry)
    text = generate_latest(registry).decode()
    return text, {family.name: family for family in text_string_to_metric_families(text)}


def _value(family, **labels):
    matches = [s.value for s in family.samples if s.labels == labels]
    assert len(matches) == 1, (family.name, labels, family.samples)
    return matches[0]


def test_names_types_and_labels(monitor):
    text, families = _scrape(monitor)
    assert set(families) == GAUGES | COUNTERS
    for name in GAUGES:
        assert families[name].type == "gauge"
    for name in COUNTERS:
        assert families[name].type == "counter"
        assert all(s.name == name + "_total" for s in families[name].samples)
    labels = {key for family in families.values() for s in family.samples for key in s.labels}
    assert labels == {"model", "group", "window", "result"}
    assert "secret" not in text  # prediction ids never become labels
    models = {s.labels["model"] for f in families.values() for s in f.samples if "model" in s.labels}
    assert models == {"cnn"}  # unregistered models are not exported
    windows = {s.labels["window"] for f in families.values() for s in f.samples if "window" in s.labels}
    assert windows == {"5m", "1h", "1d"}


def test_values_equal_the_monitor(monitor):
    _, families = _scrape(monitor)
    report = monitor.metrics("cnn")
    checked = 0
    for window in report.windows:
        label = window_label(window.window_seconds)
        for group in window.groups:
            for name, attribute, _ in GROUP_WINDOW_GAUGES:
                expected = getattr(group, attribute)
                samples = [s for s in families[name].samples
                           if s.labels == {"model": "cnn", "group": group.group, "window": label}]
                if expected is None:
                    assert samples == []
                else:
                    assert [s.value for s in samples] == [pytest.approx(float(expected))]
                    checked += 1
        if window.max_excess_accuracy_gap is not None:
            assert _value(families["equiprune_model_max_excess_accuracy_gap_ratio"], model="cnn",
                          window=label) == pytest.approx(window.max_excess_accuracy_gap)
            checked += 1
        assert _value(families["equiprune_model_accuracy_parity_gap_ratio"], model="cnn",
                      window=label) == pytest.approx(window.accuracy_parity_gap)
    assert checked > 3 * 2 * 10  # the fixture produced real numbers in every window

    five = report.window(300)
    assert five.group("a&f").n > 0 and five.group("a&f").sufficient_data
    assert _value(families["equiprune_group_reference_accuracy_ratio"], model="cnn", group="b&m") == 0.8
    assert _value(families["equiprune_model_tolerance_ratio"], model="cnn") == 0.03

    totals = report.totals
    assert _value(families["equiprune_model_predictions"], model="cnn") == totals.predictions == 40
    assert _value(families["equiprune_model_outcomes"], model="cnn", result="joined") == totals.outcomes_joined == 30
    assert _value(families["equiprune_model_outcomes"], model="cnn", result="duplicate") == 1
    assert _value(families["equiprune_model_evaluation_records"], model="cnn") == 1
    assert _value(families["equiprune_model_repaired_values"], model="cnn") == 0

    status = monitor.status()
    assert _value(families["equiprune_monitor_pending_predictions"]) == status.pending_predictions == 11
    assert _value(families["equiprune_monitor_heartbeat_timestamp_seconds"]) == T0
    assert _value(families["equiprune_monitor_last_persist_timestamp_seconds"]) == T0


def test_a_scrape_sees_new_data(monitor):
    _, before = _scrape(monitor)
    monitor.record_outcomes([("cnn.secret35", 1)])
    _, after = _scrape(monitor)
    key = {"model": "cnn", "result": "joined"}
    assert _value(after["equiprune_model_outcomes"], **key) == _value(before["equiprune_model_outcomes"], **key) + 1


def test_http_scrape(monitor):
    registry = CollectorRegistry()
    MonitorExporter(monitor, registry)
    server, thread = serve_metrics(registry, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as response:
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert _value(families["equiprune_model_predictions"], model="cnn") == 40


def test_every_exported_metric_is_documented():
    """docs/monitoring.md names each metric a scrape can contain (counters with `_total`)."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text()
    exported = {f"{name}_total" for name in COUNTERS} | GAUGES
    undocumented = sorted(name for name in exported if f"`{name}`" not in docs and f"{name}{{" not in docs
                          and name not in docs.split())
    assert not undocumented, undocumented
