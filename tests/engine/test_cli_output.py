"""`equiprune-engine` speaks as `equiprune` does: ε in percentage points, the client's tables
(yes/no, small groups marked, ψ_g with the digits its verdict needs), no raw dicts unless
asked for (--json, --verbose)."""

import json

import pytest
import torch

from equiprune.engine.cli import _parser, _spec_from_args
from equiprune.engine.cli import main as cli_main
from equiprune.engine.metrics import DisparitySummary
from equiprune.text.reports import summary_line


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from equiprune.engine.dataset import save_dataset
    from equiprune.engine.demo_data import digits_group_dataset
    from equiprune.engine.finetune.config import FinetuneConfig
    from equiprune.engine.finetune.loop import finetune
    from equiprune.engine.models.io import save_safetensors
    from equiprune.engine.models.registry import ArchitectureSpec, build_model

    folder = tmp_path_factory.mktemp("cli")
    digits = digits_group_dataset()
    data, model = folder / "d.npz", folder / "dense.safetensors"
    save_dataset(digits, data)
    spec = ArchitectureSpec("mlp", {"num_classes": 10, "in_features": 64, "hidden": [64, 32]})
    torch.manual_seed(0)
    module = build_model(spec)
    finetune(module, {}, digits.select(("cohort",), split="train"), FinetuneConfig(method="naive", epochs=3, lr=0.05))
    save_safetensors(module, spec, model)
    return ["--model", str(model), "--dataset", str(data), "--group-by", "cohort"]


def _args(*extra):
    return _parser().parse_args(["budget", "--model", "m.safetensors", "--dataset", "d.npz", "--group-by", "g",
                                 "--out", "o", *extra])


@pytest.mark.parametrize("typed, fraction", [("2", 0.02), ("2pp", 0.02), ("2%", 0.02), ("0.5pp", 0.005), ("0", 0.0)])
def test_the_tolerance_is_typed_in_points(typed, fraction):
    spec = _spec_from_args(_args("--tolerance", typed), "budget_search")
    assert spec.data.tolerance == pytest.approx(fraction) and spec.budget.tolerance == pytest.approx(fraction)


def test_a_bare_fraction_is_refused_saying_what_to_write(capsys):
    with pytest.raises(SystemExit) as stop:
        _args("--tolerance", "0.02")
    assert stop.value.code == 2
    assert "tolerance is in percentage points: did you mean --tolerance 2 (for 0.02)?" in capsys.readouterr().err


def test_compress_prints_the_clients_table_and_marks_small_groups(files, tmp_path, capsys):
    # The minority has 89 test samples: below a minimum of 100 it is shown, not judged.
    assert cli_main(["compress", *files, "--sparsity", "0.8", "--method", "naive", "--epochs", "1",
                     "--min-group-size", "100", "--tolerance", "2", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "True" not in out and "False" not in out  # no dict or bool reprs
    table = out[out.index("per-group accuracy on the test split"):]
    header = next(line for line in table.splitlines() if line.startswith("group"))
    assert header.split()[:5] == ["group", "n", "dense", "pruned", "ψ_g"] and "fine-tuned [95% CI]" in header
    assert any(line.startswith("minority *") for line in table.splitlines())
    assert "* fewer than 100 samples (min_group_size): shown, not judged" in table
    assert "tolerance 2.00 points met: " in table and ("met: yes" in table or "met: no" in table)


def test_verbose_prints_each_event_as_json(files, tmp_path, capsys):
    assert cli_main(["compress", *files, "--sparsity", "0.5", "--method", "none", "--verbose",
                     "--out", str(tmp_path / "v")]) == 0
    out = capsys.readouterr().out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {"load", "evaluate_dense", "prune", "done"} <= {e["phase"] for e in events}


def test_budget_says_which_group_broke_the_tolerance_and_what_to_try(files, tmp_path, capsys):
    # ε of 0 judged by the upper bound: no probe can hold, so the search goes down to its floor.
    assert cli_main(["budget", *files, "--method", "none", "--tolerance", "0", "--require-confidence",
                     "--max-probes", "4", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "True" not in out and "False" not in out
    table = out[out.index("budget search probes"):]
    assert table.startswith("budget search probes (ε 0.00 points)")
    rows = table.splitlines()[3:7]
    assert [row.split()[0] for row in rows] == ["0.013", "0.025", "0.050", "0.100"]  # every probe, sorted
    assert all(row.split()[-1] == "no" for row in rows)
    assert "no probed sparsity kept every group within tolerance:" in table
    assert "at the lowest sparsity probed, 0.013, group" in table and "to try:" in table
    assert "fine-tune every probe" in table


def _summary(max_gap: float, tolerance: float) -> DisparitySummary:
    return DisparitySummary("minority", 0.88, 0.08, max_gap, "minority", max_gap, None, tolerance,
                            max_gap <= tolerance, False, ())


@pytest.mark.parametrize("gap, eps, shown", [
    (0.0103, 0.01, "max ψ_g +1.03 (minority), worst group minority 88.0%, tolerance 1.00 points met: no"),
    (0.01004, 0.01, "max ψ_g +1.004 (minority), worst group minority 88.0%, tolerance 1.000 points met: no"),
    (0.0099, 0.01, "max ψ_g +0.99 (minority), worst group minority 88.0%, tolerance 1.00 points met: yes"),
])
def test_the_verdict_is_visible_in_the_numbers(gap, eps, shown):
    assert summary_line("fine-tuned", _summary(gap, eps)) == f"fine-tuned: {shown} (with 95% confidence: no)"


def test_prune_first_and_last_is_off_unless_asked_for():
    assert _spec_from_args(_args(), "budget_search").pruning.keep_first_and_last is True
    assert _spec_from_args(_args("--prune-first-and-last"), "budget_search").pruning.keep_first_and_last is False


def test_the_engine_demo_runs_the_service_demos_set_up(tmp_path, capsys):
    """The service demo's fair half, in-process: an MLP pruned to 90 % with every layer pruned,
    on the digits with a held-out constraint split (docs/results/demo-setup.md)."""
    assert cli_main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "per-group accuracy on the test split" in out and "constraint split" in out
    report = json.loads((tmp_path / "compressed" / "report.json").read_text())
    assert report["pruned"]["eval"]["summary"]["max_excess_accuracy_gap_group"] == "minority"
    assert report["job"]["pruning"]["keep_first_and_last"] is False
