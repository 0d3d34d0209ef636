"""A bounded mixed load from two tenants at once (issue #11, item 7; the full run is
bench/load_tenants.py, docs/load-tenants.md): Predict, ReportOutcomes and job polling for
~10 s give no status other than OK and the intended RESOURCE_EXHAUSTED naming the quota, and
each tenant's totals count exactly the predictions it made and the outcomes it had
acknowledged, with the same served name in both tenants."""

from __future__ import annotations

import pytest

from harness.load import QUOTA_FIELD, run_load, setup_tenants, train_model_file

pytestmark = pytest.mark.slow


def test_mixed_load_from_two_tenants_counts_every_outcome_once_in_its_own_tenant(server, tmp_path):
    model = train_model_file(tmp_path / "m.safetensors")
    tenants = setup_tenants(server.target, server.admin_token, ["load-a", "load-b"], model, max_concurrent_jobs=1)
    result = run_load(server.target, tenants, 10.0, job_every_s=4.0, hold_s=1.0)

    assert result["unintended"] == {}, result["unintended"]
    assert result["rpcs"]["CreateJob"]["codes"].get("RESOURCE_EXHAUSTED", 0) == result["intended_exhausted"] > 0
    for rpc in ("Predict", "ReportOutcomes", "GetJob", "WaitJob", "ListJobs", "CancelJob"):
        assert result["rpcs"][rpc]["codes"].get("OK", 0) > 0, rpc
    for name, t in result["per_tenant"].items():
        assert t["exhausted"] > 0, f"{name}: no RESOURCE_EXHAUSTED naming {QUOTA_FIELD}"
        assert t["predicted"] > 0
        assert t["totals"]["predictions"] == t["predicted"], name
        assert t["acknowledged"]["joined"] == t["outcomes_sent"] == t["predicted"], name
        assert t["totals"]["outcomes_joined"] == t["acknowledged"]["joined"], name
        assert not any(t["totals"][f"outcomes_{k}"] for k in ("unknown", "duplicate", "late", "invalid")), t["totals"]
        assert t["foreign_ids"] == 0 and t["quota_not_enforced"] == 0 and t["unfinished_jobs_after"] == 0, t
    assert result["failures"] == []
