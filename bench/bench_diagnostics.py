"""Per-group diagnostics time against one evaluation pass over the same data.

The diagnostics read each group's own samples: one pass for loss, gradient and every
Hutchinson probe (the probes share the pass's graph), one pass per power iteration, and one
pass per group for each predicted-R(a) mask. This script measures the wall time of each
against `evaluate` on the same model and data, in one run.

    python bench/bench_diagnostics.py
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import write_results
from equiprune.engine.diagnostics import DiagnosticsConfig, diagnose
from equiprune.engine.evaluation import evaluate
from equiprune.engine.finetune.config import FinetuneConfig
from equiprune.engine.finetune.loop import finetune
from equiprune.engine.models.registry import ArchitectureSpec, build_model
from equiprune.engine.prune import PruningConfig, prune
from harness.data import load_utkface


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--max-train", type=int, default=2000)
    args = p.parse_args(argv)

    data = load_utkface(target="race", max_train=args.max_train, max_test=500)
    train = data.select(("race",), split="train")
    torch.manual_seed(0)
    model = build_model(ArchitectureSpec(args.arch, {"num_classes": data.num_classes, "in_channels": 3, "input_size": 32}))
    finetune(model, {}, train, FinetuneConfig(method="naive", epochs=2, lr=0.05))  # a trained-ish model: realistic curvature
    evaluate(model, train)  # warm-up
    _, eval_s = timed(lambda: evaluate(model, train))
    masks = prune(model, PruningConfig(sparsity=0.9)).masks

    results = {"samples": len(train), "groups": train.num_groups, "evaluation_seconds": eval_s, "configs": {}}
    lines = [f"{len(train)} UTKFace training faces in {train.num_groups} race groups, {args.arch}; "
             f"one evaluation pass = {eval_s:.2f} s.", "",
             "| probes | power iterations (max) | iterations used (max over groups) | diagnose s | × evaluation | predict R(a) for one mask s | × evaluation |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for probes, iterations in ((4, 5), (8, 10)):
        config = DiagnosticsConfig(probes=probes, power_iterations=iterations, include_overall=False)
        diagnostics, diag_s = timed(lambda: diagnose(model, train, config))
        _, pred_s = timed(lambda: diagnostics.predict_excess_loss(model, train, masks))
        used = max(g.power_iterations_used for g in diagnostics.groups)
        results["configs"][f"{probes}x{iterations}"] = {
            "diagnose_seconds": diag_s, "ratio": diag_s / eval_s, "predict_seconds": pred_s,
            "predict_ratio": pred_s / eval_s, "power_iterations_used": used}
        lines.append(f"| {probes} | {iterations} | {used} | {diag_s:.1f} | {diag_s / eval_s:.0f} | {pred_s:.2f} | {pred_s / eval_s:.1f} |")
    lines += ["", f"torch threads: {torch.get_num_threads()}. The paper reproduction uses 8 probes and 10 iterations "
              "on at most 400 faces per group."]
    write_results("diagnostics_time", "OMP_NUM_THREADS=1 python bench/bench_diagnostics.py", results, lines)


if __name__ == "__main__":
    main()
