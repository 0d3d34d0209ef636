"""Fair fine-tuning epoch time against naive fine-tuning, same model, data and masks.

Target (issue #2): every fair method ≤ 1.10× the naive epoch time. Each method runs the same
number of epochs after one warm-up epoch; the median epoch time is compared as a ratio, all in
one run, side by side.

    python bench/bench_finetune_speed.py            # UTKFace subset, small_cnn and resnet20
"""

from __future__ import annotations

import argparse
import os
import copy
import statistics

import torch

from _common import write_results
from equiprune.engine.evaluation import evaluate
from equiprune.engine.finetune.config import FinetuneConfig
from equiprune.engine.finetune.loop import finetune
from equiprune.engine.models.registry import ArchitectureSpec, build_model
from equiprune.engine.prune import PruningConfig, prune
from harness.data import load_utkface

METHODS = ("naive", "equalized_loss", "ceag", "heldout_ceag", "fair_distill")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--archs", default="small_cnn,resnet20")
    p.add_argument("--max-train", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per method (after one warm-up)")
    args = p.parse_args(argv)

    data = load_utkface(target="race", max_train=args.max_train, max_test=500)
    train, constraint = data.select(("race",), split="train").split_off(0.2, seed=0)
    results, lines = {}, ["| model | method | median epoch s | ratio to naive |", "| --- | --- | ---: | ---: |"]
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        dense = build_model(ArchitectureSpec(arch, {"num_classes": data.num_classes, "in_channels": 3, "input_size": 32}))
        # The dense training logits are kept from the reference pass, as the pipeline does.
        refs = dict(train_reference=evaluate(dense, train, keep_logits=True), constraint=constraint,
                    constraint_reference=evaluate(dense, constraint), teacher=dense)
        outcome = prune(dense, PruningConfig(sparsity=0.9))
        times = {}
        for method in METHODS:
            model = copy.deepcopy(outcome.module)
            config = FinetuneConfig(method=method, epochs=args.epochs + 1)
            result = finetune(model, outcome.masks, train, config, **refs)
            times[method] = statistics.median(e.seconds for e in result.epochs[1:])
        results[arch] = {m: {"median_epoch_seconds": t, "ratio_to_naive": t / times["naive"]} for m, t in times.items()}
        for m, t in times.items():
            lines.append(f"| {arch} | {m} | {t:.2f} | {t / times['naive']:.3f} |")
    lines += ["", f"{len(train)} training faces (UTKFace 32×32, target race), batch 128, 90 % layer-wise sparsity; "
              "the held-out variant's epoch also evaluates 4 constraint samples per group per step; fair_distill reads "
              "the dense model's logits from the reference evaluation the pipeline runs anyway.",
              f"Load average (1, 5, 15 min) at the end: {os.getloadavg()}."]
    write_results("finetune_speed", "python bench/bench_finetune_speed.py", results, lines)


if __name__ == "__main__":
    main()
