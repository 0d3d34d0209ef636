"""The deployment files agree with the code and with each other.

deploy/ holds a Serve config, a KubeRay RayService, Prometheus config and rules and a Grafana
dashboard; the Dockerfile builds the image they run. None of them is exercised by the rest of
the suite, so these tests check what would otherwise only break in production: every file
parses, the Serve configs name an importable application and servicers and valid settings,
the RayService embeds the same application, the dashboard and the alerts query only metrics the
monitor exports, and the ports line up everywhere.
"""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SERVE_YAML = DEPLOY / "serve.yaml"
RAYSERVICE_YAML = DEPLOY / "kuberay" / "rayservice.yaml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "equiprune-dashboard.json"
DOCKERFILE = ROOT / "Dockerfile"
EXPORTER_SOURCE = ROOT / "service" / "equiprune" / "service" / "serving" / "monitor" / "exporter.py"

# The metric names of the monitor's exporter, as specified for issue #4 (the monitoring brief;
# docs/monitoring.md documents them). Hard-coded here rather than imported because the exporter
# builds its families in code without one list of names; test_documented_metrics_are_exported
# checks this list against the exporter's source so that the two cannot drift apart.
KNOWN_METRICS = frozenset({
    # per group and window (model, group, window)
    "equiprune_group_predictions",
    "equiprune_group_outcomes",
    "equiprune_group_accuracy_ratio",
    "equiprune_group_accuracy_ci_low_ratio",
    "equiprune_group_accuracy_ci_high_ratio",
    "equiprune_group_error_ratio",
    "equiprune_group_confidence_mean_ratio",
    "equiprune_group_boundary_proxy_mean",
    "equiprune_group_accuracy_drop_ratio",
    "equiprune_group_excess_accuracy_gap_ratio",
    "equiprune_group_sufficient_data",
    "equiprune_group_shadow_agreement_ratio",
    "equiprune_group_shadow_predictions",
    # per group (model, group)
    "equiprune_group_reference_accuracy_ratio",
    # per model and window (model, window)
    "equiprune_model_max_excess_accuracy_gap_ratio",
    "equiprune_model_accuracy_parity_gap_ratio",
    # per model (model; result on outcomes)
    "equiprune_model_tolerance_ratio",
    "equiprune_model_predictions_total",
    "equiprune_model_outcomes_total",
    "equiprune_model_evaluation_records_total",
    # the monitor (no labels)
    "equiprune_monitor_heartbeat_timestamp_seconds",
    "equiprune_monitor_last_persist_timestamp_seconds",
    "equiprune_monitor_pending_predictions",
})

GRPC_PORT, HTTP_PORT, METRICS_PORT = 9000, 8000, 9464
METRIC_NAME = re.compile(r"\bequiprune_[a-z0-9_]+\b")


# ------------------------------------------------------------------ loading


def _documents(path: Path) -> list:
    if path.suffix == ".json":
        return [json.loads(path.read_text())]
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _kind(kind: str) -> list[dict]:
    return [doc for doc in _documents(RAYSERVICE_YAML) if doc["kind"] == kind]


def _rayservice() -> dict:
    (service,) = _kind("RayService")
    return service


def _serve_configs() -> dict[str, dict]:
    """Both Serve configs: the file `serve run` takes and the one embedded in the RayService."""
    return {
        "deploy/serve.yaml": yaml.safe_load(SERVE_YAML.read_text()),
        "rayservice serveConfigV2": yaml.safe_load(_rayservice()["spec"]["serveConfigV2"]),
    }


def _application(config: dict) -> dict:
    (app,) = config["applications"]
    return app


def _resolve(dotted: str, separator: str):
    module_name, attribute = dotted.rsplit(separator, 1)
    return getattr(importlib.import_module(module_name), attribute)


def _dashboard() -> dict:
    return json.loads(DASHBOARD_JSON.read_text())


def _dashboard_panels() -> list[dict]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _alert_rules() -> list[dict]:
    (group,) = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return group["rules"]


def _dockerfile_instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.read_text().splitlines()
            if line.split(None, 1)[:1] == [name]]


# ------------------------------------------------------------------ every file parses


def test_every_deploy_file_parses():
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml", ".json"})
    names = {p.relative_to(DEPLOY).as_posix() for p in files}
    assert {"serve.yaml", "kuberay/rayservice.yaml", "prometheus/prometheus.yml", "prometheus/alerts.yml",
            "prometheus/alerts_test.yml", "grafana/equiprune-dashboard.json"} <= names
    for path in files:
        assert _documents(path), f"{path} is empty"


def test_serve_configs_are_valid_serve_deploy_configs():
    from ray.serve.schema import ServeDeploySchema

    for where, config in _serve_configs().items():
        schema = ServeDeploySchema.model_validate(config)
        assert schema.grpc_options.port == GRPC_PORT, where
        assert schema.http_options.port == HTTP_PORT, where


# ------------------------------------------------------------------ the Serve application


def test_import_paths_resolve_to_the_app_builder():
    from equiprune.service.app import app_builder

    for where, config in _serve_configs().items():
        import_path = _application(config)["import_path"]
        assert import_path == "equiprune.service.app:app_builder", where
        assert _resolve(import_path, ":") is app_builder, where


def test_grpc_servicer_functions_are_importable_and_complete():
    from equiprune.service.app import GRPC_SERVICER_FUNCTIONS

    for where, config in _serve_configs().items():
        functions = config["grpc_options"]["grpc_servicer_functions"]
        assert sorted(functions) == sorted(GRPC_SERVICER_FUNCTIONS), where
        assert "equiprune.service.rpc.servicers.add_ServingServiceServicer_to_server" in functions
        for dotted in functions:
            assert callable(_resolve(dotted, ".")), f"{where}: {dotted} is not callable"


def test_application_args_are_valid_server_settings():
    from equiprune.service.settings import ServerSettings

    for where, config in _serve_configs().items():
        settings = ServerSettings.model_validate(_application(config)["args"])
        assert settings.metrics_port == METRICS_PORT, where


def test_settings_defaults_match_the_deploy_ports():
    from equiprune.service.settings import ServerSettings

    fields = ServerSettings.model_fields
    assert (fields["grpc_port"].default, fields["http_port"].default, fields["metrics_port"].default) == (
        GRPC_PORT, HTTP_PORT, METRICS_PORT)


def _deployment_names(args: dict, data_dir: Path) -> set[str]:
    from ray.serve._private.build_app import build_app  # walks the bound graph; needs no cluster

    from equiprune.service.app import app_builder

    built = build_app(app_builder({**args, "data_dir": str(data_dir)}), name="equiprune")
    return {deployment.name for deployment in built.deployments}


def test_rayservice_deployment_overrides_name_real_deployments_pinned_to_the_head(tmp_path):
    config = yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])
    app = _application(config)
    names = _deployment_names(app["args"], tmp_path)
    assert {"Ingress", "JobManager", "MonitorService"} <= names

    head_params = _rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    # KubeRay passes the value to `ray start --resources` through a shell: a quoted JSON string.
    head_resources = json.loads(json.loads(head_params["resources"]))
    overrides = {d["name"]: d for d in app["deployments"]}
    assert set(overrides) <= names, f"overrides for unknown deployments: {set(overrides) - names}"
    # The stateful deployments must land next to the data volume.
    for name in ("JobManager", "MonitorService"):
        wanted = overrides[name]["ray_actor_options"]["resources"]
        assert wanted and all(0 < amount <= head_resources.get(key, 0) for key, amount in wanted.items()), name


# ------------------------------------------------------------------ the RayService


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec["template"]["spec"]["containers"]


def test_rayservice_head_exposes_every_port():
    cluster = _rayservice()["spec"]["rayClusterConfig"]
    (head,) = _containers(cluster["headGroupSpec"])
    ports = {p["containerPort"]: p["name"] for p in head["ports"]}
    assert {6379, 8265, HTTP_PORT, GRPC_PORT, METRICS_PORT} <= set(ports)
    assert ports[HTTP_PORT] == "serve"  # the name KubeRay's serve Service selects
    # KubeRay uses the port named `metrics` for Ray's own metrics: the monitor's must not take it.
    assert ports[METRICS_PORT] != "metrics"
    assert all(len(name) <= 15 for name in ports.values())  # Kubernetes' port name limit


def test_rayservice_has_cpu_and_gpu_workers_on_equiprune_images():
    cluster = _rayservice()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == importlib.import_module("ray").__version__
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    (gpu,) = _containers(groups["gpu"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    (cpu,) = _containers(groups["cpu"])
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    (head,) = _containers(cluster["headGroupSpec"])
    for container in (head, cpu, gpu):
        assert container["image"].startswith("equiprune:latest"), container["image"]


def test_rayservice_data_dir_is_on_a_persistent_volume_claim():
    config = yaml.safe_load(_rayservice()["spec"]["serveConfigV2"])
    args = _application(config)["args"]
    head_pod = _rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (head,) = head_pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in head["volumeMounts"]}
    volumes = {v["name"]: v for v in head_pod["volumes"]}
    claims = {c["metadata"]["name"]: c for c in _kind("PersistentVolumeClaim")}

    data_volume = volumes[mounts[args["data_dir"]]]
    assert data_volume["persistentVolumeClaim"]["claimName"] in claims
    # The artifact root is shared by every pod that may run a job.
    artifacts_claim = volumes[mounts[args["artifact_root"]]]["persistentVolumeClaim"]["claimName"]
    assert "ReadWriteMany" in claims[artifacts_claim]["spec"]["accessModes"]
    for group in _rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        (worker,) = pod["containers"]
        worker_mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
        claim = {v["name"]: v for v in pod["volumes"]}[worker_mounts[args["artifact_root"]]]
        assert claim["persistentVolumeClaim"]["claimName"] == artifacts_claim, group["groupName"]


def test_rayservice_services_target_the_grpc_and_metrics_ports():
    ports = {s["metadata"]["name"]: {p["targetPort"] for p in s["spec"]["ports"]} for s in _kind("Service")}
    assert ports == {"equiprune-grpc": {GRPC_PORT}, "equiprune-metrics": {METRICS_PORT}}


# ------------------------------------------------------------------ ports everywhere


def test_ports_agree_between_dockerfile_serve_config_rayservice_and_prometheus():
    exposed = {int(p) for line in _dockerfile_instructions("EXPOSE") for p in line.split()}
    assert exposed == {GRPC_PORT, HTTP_PORT, METRICS_PORT}
    for where, config in _serve_configs().items():
        assert config["grpc_options"]["port"] == GRPC_PORT, where
        assert config["http_options"]["port"] == HTTP_PORT, where
        assert _application(config)["args"]["metrics_port"] == METRICS_PORT, where
    prometheus = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == "equiprune"
    assert job["static_configs"][0]["targets"] == [f"127.0.0.1:{METRICS_PORT}"]
    assert job["scrape_interval"] == "15s"
    assert prometheus["rule_files"] == ["alerts.yml"]
    annotations = _rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)


# ------------------------------------------------------------------ the Dockerfile


def test_dockerfile_pins_the_projects_torch_and_defaults_to_cpu():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [r for r in pyproject["project"]["optional-dependencies"]["server"] if r.startswith("torch==")]
    args = dict(a.split("=", 1) for a in _dockerfile_instructions("ARG") if "=" in a)
    assert f"torch=={args['TORCH_VERSION']}" == pin
    assert args["TORCH_VARIANT"] == "cpu"
    assert '"torch==${TORCH_VERSION}+${TORCH_VARIANT}"' in DOCKERFILE.read_text()


def test_dockerfile_runs_the_server_on_all_interfaces_with_data_in_a_volume():
    (entrypoint,) = _dockerfile_instructions("ENTRYPOINT")
    # Under an init (tini) as PID 1, as root: the sandbox switches each worker to a user of its own.
    assert json.loads(entrypoint) == ["tini", "--", "equiprune", "serve", "--host", "0.0.0.0", "--data-dir", "/data"]
    assert _dockerfile_instructions("USER") == ["root"]
    assert _dockerfile_instructions("VOLUME") == ["/data"]


# ------------------------------------------------------------------ metric names


def test_documented_metrics_are_exported():
    source = EXPORTER_SOURCE.read_text()
    exported = set(re.findall(r'"(equiprune_[a-z0-9_]+)"', source))
    # prometheus_client appends _total to counter families when it exposes them.
    missing = {m for m in KNOWN_METRICS if m not in exported and m.removesuffix("_total") not in exported}
    assert not missing, f"metrics the dashboards and alerts rely on that the exporter does not define: {missing}"


def test_alerts_use_only_known_metrics():
    used = {name for rule in _alert_rules() for name in METRIC_NAME.findall(rule["expr"])}
    assert used and used <= KNOWN_METRICS, used - KNOWN_METRICS


def test_dashboard_uses_only_known_metrics():
    used = {name for panel in _dashboard_panels() for t in panel["targets"] for name in METRIC_NAME.findall(t["expr"])}
    variables = {name for v in _dashboard()["templating"]["list"] if v["type"] == "query"
                 for name in METRIC_NAME.findall(v["definition"])}
    assert used and used <= KNOWN_METRICS, used - KNOWN_METRICS
    assert variables <= KNOWN_METRICS, variables - KNOWN_METRICS


def test_metric_name_check_would_catch_an_unknown_name():
    assert METRIC_NAME.findall('sum(rate(equiprune_model_predictionz_total{model="$model"}[5m]))') == [
        "equiprune_model_predictionz_total"]
    assert "equiprune_model_predictionz_total" not in KNOWN_METRICS


# ------------------------------------------------------------------ alert rules


def test_alert_rules_are_the_four_documented_with_severity_and_duration():
    expected = {
        "EquipruneGroupExcessGapAboveTolerance": ("page", "15m"),
        "EquipruneGroupAccuracyBelowReference": ("page", "15m"),
        "EquipruneShadowDisagreementHigh": ("ticket", "15m"),
        "EquipruneMonitorLagging": ("page", "5m"),
    }
    rules = _alert_rules()
    assert {r["alert"] for r in rules} == set(expected)
    for rule in rules:
        severity, duration = expected[rule["alert"]]
        assert (rule["labels"]["severity"], rule["for"]) == (severity, duration), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_per_group_alerts_judge_the_one_hour_window_with_bounded_matching():
    for rule in _alert_rules():
        windows = set(re.findall(r'window="([^"]*)"', rule["expr"]))
        if rule["alert"].startswith("EquipruneGroup") or rule["alert"].startswith("EquipruneShadow"):
            assert windows == {"1h"}, rule["alert"]
            assert "{{ $labels.model }}" in rule["annotations"]["description"]
            assert "{{ $labels.group }}" in rule["annotations"]["description"]
            assert "$value" in rule["annotations"]["description"]
        if "group_left" in rule["expr"]:
            # The one side is reduced to exactly the matching labels (see alerts.yml).
            on = re.search(r"on \(([^)]*)\) group_left\s+max by \(([^)]*)\)", rule["expr"])
            assert on and on.group(1) == on.group(2), rule["alert"]


# ------------------------------------------------------------------ the Grafana dashboard


def test_dashboard_panels_query_prometheus_through_the_datasource_variable():
    panels = _dashboard_panels()
    assert len(panels) >= 6
    ids = [p["id"] for p in _dashboard()["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_defines_every_variable_it_uses():
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"model", "window"} <= set(variables)
    text = DASHBOARD_JSON.read_text()
    used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))
    builtin = {name for name in used if name.startswith("__")}
    assert used - builtin <= set(variables), used - builtin - set(variables)


def test_dashboard_has_the_documented_panels():
    panels = _dashboard_panels()
    queries = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels}

    def panel_with(*metrics: str) -> str:
        found = [title for title, q in queries.items() if all(m in q for m in metrics)]
        assert found, f"no panel queries {metrics}"
        return found[0]

    panel_with("equiprune_group_accuracy_ratio", "equiprune_group_accuracy_ci_low_ratio",
               "equiprune_group_accuracy_ci_high_ratio")
    panel_with("equiprune_group_excess_accuracy_gap_ratio", "equiprune_model_tolerance_ratio")
    panel_with("equiprune_model_accuracy_parity_gap_ratio", "equiprune_model_max_excess_accuracy_gap_ratio")
    panel_with("equiprune_group_predictions", "equiprune_group_outcomes")
    panel_with("equiprune_group_shadow_agreement_ratio")
    panel_with("time() - max(equiprune_monitor_heartbeat_timestamp_seconds)")

    # The CI band: the upper bound fills down to the lower one.
    accuracy = next(p for p in panels if "equiprune_group_accuracy_ci_high_ratio" in queries[p["title"]])
    legends = {t["legendFormat"] for t in accuracy["targets"]}
    fills = [prop["value"] for o in accuracy["fieldConfig"]["overrides"] for prop in o["properties"]
             if prop["id"] == "custom.fillBelowTo"]
    assert fills and set(fills) <= legends


@pytest.mark.parametrize("path", [SERVE_YAML, RAYSERVICE_YAML])
def test_no_serve_config_routes_grpc_to_null(path):
    """route_prefix null makes a gRPC-only application answer NOT_FOUND (docs/service.md)."""
    text = path.read_text()
    assert not re.search(r"^\s*route_prefix:\s*(null|~)?\s*$", text, re.M)
