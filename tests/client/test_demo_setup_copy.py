"""`equiprune demo`'s set-up is the engine's (engine/demo_data.py, chosen by
bench/demo_setup.py), and what the README says of its re-check is what that bench wrote."""

import json
import re
from pathlib import Path

from equiprune.client import demo as client_demo
from equiprune.engine import demo_data as engine_demo

ROOT = Path(__file__).resolve().parents[2]


def test_the_client_copy_of_the_demo_set_up_is_the_engines():
    assert client_demo.DIGITS_GROUP_BY == engine_demo.DEMO_GROUP_BY
    assert client_demo.DIGITS_ARCHITECTURE == engine_demo.DEMO_ARCHITECTURE
    assert client_demo.DIGITS_ARCHITECTURE_KWARGS == engine_demo.DEMO_ARCHITECTURE_KWARGS
    assert client_demo.DIGITS_KEEP_FIRST_AND_LAST == engine_demo.DEMO_KEEP_FIRST_AND_LAST
    assert client_demo.DEFAULT_SPARSITY == engine_demo.DEMO_SPARSITY
    assert (client_demo.TRAIN_EPOCHS, client_demo.TRAIN_LR) == (engine_demo.DEMO_TRAIN_EPOCHS, engine_demo.DEMO_TRAIN_LR)
    assert client_demo.FINETUNE == dict(method="fair_distill", epochs=engine_demo.DEMO_FINETUNE_EPOCHS,
                                        min_group_size=engine_demo.DEMO_MIN_GROUP_SIZE,
                                        tolerance=engine_demo.DEMO_TOLERANCE)


def test_the_set_up_is_the_one_the_bench_chose():
    record = json.loads((ROOT / "docs/results/demo-setup.json").read_text())
    e = engine_demo
    assert record["chosen"] == f"{e.DEMO_ARCHITECTURE}, sparsity {e.DEMO_SPARSITY:g}, {e.DEMO_FINETUNE_EPOCHS} fine-tuning epochs"


def test_the_readmes_re_check_figures_are_the_benchs():
    from bench.fair_repair import paired

    rows = json.loads((ROOT / "docs/results/demo-setup.json").read_text())["recheck"]
    eps = engine_demo.DEMO_TOLERANCE * 100
    fair = sum(r["fair_distill"] <= eps for r in rows)
    naive = sum(r["naive"] <= eps for r in rows)
    d = paired([r["fair_distill"] for r in rows], [r["naive"] for r in rows])
    readme = " ".join((ROOT / "README.md").read_text().split())
    words = {0: "none", 1: "one", 2: "2", 3: "3", 4: "4", 5: "5"}
    said = re.search(r"re-checked on (\w+) other random splits of the digits, the fair method kept every group within "
                     r"ε on (\w+) of (\w+) and naive fine-tuning on (\w+), the fair method's worst gap lower by "
                     r"([\d.]+) points on average \(95 % interval ([\d.]+) to ([\d.]+)\)", readme)
    assert said, "the README's sentence on the demo's re-check is gone or reworded: update this test with it"
    assert said.groups() == ({5: "five"}.get(len(rows), str(len(rows))), str(fair), str(len(rows)), words[naive],
                             f"{-d['mean']:.1f}", f"{-d['high']:.1f}", f"{-d['low']:.1f}")
