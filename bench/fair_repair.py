"""Fair fine-tuning methods side by side, over seeds, with paired intervals against naive.

One dense model per set-up (cached), pruned once per sparsity (layer-wise magnitude, first
conv and last linear dense, BatchNorm recalibrated); then every method fine-tunes that same
pruned model with the same budget, once per seed. The seed sets the batch order (and so
every random choice of the run); seed s of a method is paired with seed s of naive.

Set-ups: `utkface` (target race, groups race: the paper's), `cifar10` (classes as groups:
Balancing Act's second kind of set-up, on the shared CIFAR-10 subset), `digits_tabular`
(scikit-learn's bundled digits read as 64 tabular features by an MLP, groups the synthetic
`cohort`: digits 8 and 9 are the minority; a small set from another domain, no convolution).

Data use, for every method alike: a stratified 20 % of the training split is the constraint
split, cut away before the dense model trains; only the held-out dual steps and fair_distill's
output calibration read it (no primal step does). With
`--select`, a further stratified 20 % of what is left is a *selection* split, the only data
the numbers are then reported on: method settings are chosen there, never on the test split,
which a final run (without `--select`) reads once.

A method is a name with optional settings, e.g. `fair_distill:distill_alpha=0.5+dual_lr=0`;
its label in the table is the whole string.

    OMP_NUM_THREADS=1 python bench/fair_repair.py --setups utkface --sparsities 0.9,0.95 --seeds 5
    python bench/fair_repair.py --from-results docs/results/fair-repair/utkface.json  # re-render

Writes <out>/<setup>.json and <out>/<setup>.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # harness/data.py: the shared-data loaders

from bench._common import machine  # noqa: E402
from equiprune.engine.evaluation import evaluate  # noqa: E402
from equiprune.engine.finetune.config import DEFAULT_FAIR_METHOD, FinetuneConfig  # noqa: E402
from equiprune.engine.finetune.loop import finetune  # noqa: E402
from equiprune.engine.models.io import load_model, save_safetensors  # noqa: E402
from equiprune.engine.models.registry import ArchitectureSpec, build_model  # noqa: E402
from equiprune.engine.prune import PruningConfig, prune  # noqa: E402
from equiprune.engine.pruning.batchnorm import recalibrate_batchnorm  # noqa: E402
from equiprune.engine.report import build_report  # noqa: E402
from equiprune.engine.demo_data import digits_group_dataset  # noqa: E402
from equiprune.engine.groups import GroupedData  # noqa: E402
from harness.data import load_cifar10, load_utkface  # noqa: E402

DEFAULT_METHODS = "naive,equalized_loss,ceag,heldout_ceag,fair_distill"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setups", default="utkface")
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--sparsities", default="0.9,0.95")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--dense-epochs", type=int, default=15)
    p.add_argument("--ft-epochs", type=int, default=3)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--select", action="store_true", help="report on a selection split carved from train, not on test")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "fair-repair"))
    p.add_argument("--cache", default=str(ROOT / "bench" / "out" / "dense-cache"))
    p.add_argument("--from-results", default=None,
                   help="comma-separated results JSONs of one set-up to merge and re-render into --out")
    return p.parse_args(argv)


def parse_method(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition(":")
    overrides = {}
    for item in filter(None, settings.split("+")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a bare word: a string setting such as held_out
    return name, overrides


def load_setup(name: str, args):
    """(train, constraint, test, architecture, pruning config) of a set-up."""
    flatten = False
    pruning = PruningConfig(sparsity=0.9, scope="layerwise")
    if name == "utkface":
        data, group_by = load_utkface(target="race", max_train=args.max_train, max_test=args.max_test), ("race",)
        spec = ArchitectureSpec(args.arch, {"num_classes": data.num_classes, "in_channels": 3, "input_size": 32})
    elif name == "cifar10":
        data, group_by = load_cifar10(max_train=args.max_train, max_test=args.max_test), ("class",)
        spec = ArchitectureSpec(args.arch, {"num_classes": data.num_classes, "in_channels": 3, "input_size": 32})
    elif name == "digits_tabular":
        data, group_by, flatten = digits_group_dataset(), ("cohort",), True
        spec = ArchitectureSpec("mlp", {"in_features": 64, "num_classes": 10, "hidden": [64, 64]})
        # Two linear layers of three: keeping the first and last dense would leave one to prune.
        pruning = PruningConfig(sparsity=0.9, scope="layerwise", keep_first_and_last=False)
    else:
        raise SystemExit(f"unknown set-up {name!r}")

    def select(split):
        part = data.select(group_by, split=split)
        return GroupedData(part.inputs.reshape(len(part), -1), part.labels, part.groups, part.group_names) if flatten else part

    train, constraint = select("train").split_off(0.2, seed=0)
    test = select("test")
    if args.select:
        train, test = train.split_off(0.2, seed=1)
    return train, constraint, test, spec, pruning


def dense_model(spec, train, args, setup, epochs):
    """The dense model, trained once per set-up and cached (training is deterministic)."""
    key = json.dumps({"spec": spec.to_dict(), "n": len(train), "epochs": epochs, "setup": setup,
                      "select": args.select, "max_train": args.max_train})
    cache = Path(args.cache) / f"dense-{setup}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"
    if cache.exists() and cache.with_suffix(".key").read_text() == key:
        return load_model(cache).module, 0.0
    torch.manual_seed(0)
    dense = build_model(spec)
    started = time.perf_counter()
    batch = 128 if train.inputs.dim() == 4 else 32
    finetune(dense, {}, train, FinetuneConfig(method="naive", epochs=epochs, batch_size=batch, lr=0.05,
                                              augment_hflip=train.inputs.dim() == 4, seed=0))
    seconds = time.perf_counter() - started
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(dense, spec, cache)
    cache.with_suffix(".key").write_text(key)
    return dense, seconds


def run_setup(setup: str, args) -> dict:
    started = time.perf_counter()
    train, constraint, test, spec, pruning_config = load_setup(setup, args)
    dense_epochs = args.dense_epochs if setup != "digits_tabular" else max(args.dense_epochs, 30)
    dense, dense_seconds = dense_model(spec, train, args, setup, dense_epochs)
    # The dense training logits are kept as the pipeline keeps them from its dense report. Its
    # logits on the constraint split are not: a job evaluates the dense model there only for
    # the methods that read that split, so fair_distill's calibration computes them inside
    # the timed fine-tuning (the pass a job adds for it).
    ref = {"train": evaluate(dense, train, keep_logits=True), "test": evaluate(dense, test), "constraint": evaluate(dense, constraint)}
    print(f"[{setup}] train {len(train)} constraint {len(constraint)} {'selection' if args.select else 'test'} {len(test)};"
          f" dense acc train {ref['train'].accuracy():.3f} test {ref['test'].accuracy():.3f}", flush=True)
    record = {"setup": setup, "sizes": {"train": len(train), "constraint": len(constraint), "test": len(test)},
              "evaluated_on": "selection" if args.select else "test", "group_names": list(train.group_names),
              "dense_seconds": dense_seconds,
              "dense": {k: build_report(ref[k]).to_dict() for k in ("train", "test")}, "sparsities": {}}
    for sparsity in [float(s) for s in args.sparsities.split(",")]:
        outcome = prune(dense, dataclasses.replace(pruning_config, sparsity=sparsity))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        recalibrate_batchnorm(outcome.module, train.inputs[order])
        pruned = {k: build_report(evaluate(outcome.module, d), ref[k]).to_dict() for k, d in (("train", train), ("test", test))}
        entry = {"pruned": pruned, "methods": {}}
        for text in args.methods.split(","):
            name, overrides = parse_method(text)
            runs = []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                model = copy.deepcopy(outcome.module)
                config = FinetuneConfig(method=name, epochs=args.ft_epochs, seed=seed, **overrides)
                t0 = time.perf_counter()
                result = finetune(model, outcome.masks, train, config, train_reference=ref["train"],
                                  constraint=constraint, constraint_reference=ref["constraint"], teacher=dense)
                seconds = time.perf_counter() - t0
                reports = {k: build_report(evaluate(model, d), ref[k]) for k, d in (("train", train), ("test", test))}
                runs.append({"seed": seed, "seconds": seconds, "load": os.getloadavg()[0],
                             "calibration": result.calibration,
                             "multipliers": [e.multipliers for e in result.epochs],
                             **{k: v.to_dict() for k, v in reports.items()}})
                print(f"[{setup}] s={sparsity} {text} seed {seed}: train max psi "
                      f"{100 * reports['train'].summary.max_excess_accuracy_gap:+.2f}, test max psi "
                      f"{100 * reports['test'].summary.max_excess_accuracy_gap:+.2f}, test acc "
                      f"{100 * reports['test'].overall.accuracy:.2f} ({seconds:.0f}s)", flush=True)
            entry["methods"][text] = runs
        record["sparsities"][str(sparsity)] = entry
        record["seconds"] = time.perf_counter() - started
    return record


def t_quantile(df: int) -> float:
    """Two-sided 95 % Student t quantile."""
    try:
        from scipy.stats import t
        return float(t.ppf(0.975, df))
    except ImportError:  # a table to df 30, then the Cornish-Fisher expansion around 1.96
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
                 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}
        if df in table:
            return table[df]
        z = 1.959964
        return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def paired(values: list[float], baseline: list[float]) -> dict:
    """Mean of the per-seed differences and its 95 % t interval."""
    d = [a - b for a, b in zip(values, baseline)]
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n}
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def _dense_losses(report: dict) -> str:
    """The dense model's own per-group training losses: how far it is from Equalized Loss's
    constraint J_a = J before any pruning."""
    overall = report["overall"]["loss"]
    losses = {g["group"]: g["loss"] for g in report["groups"] if g["loss"] is not None}
    worst = max(abs(v - overall) for v in losses.values())
    return ("Dense model's mean training loss per group (nats): " + ", ".join(f"{k} {v:.2f}" for k, v in losses.items())
            + f"; overall {overall:.2f}. The dense model itself violates Equalized Loss's J_a = J by up to {worst:.2f}.")


def summarise(record: dict) -> list[str]:
    split = record["evaluated_on"]
    lines = [f"## {record['setup']}: sizes {record['sizes']}, numbers on the **{split}** split", "",
             f"Dense accuracy: train {100 * record['dense']['train']['overall']['accuracy']:.2f}, "
             f"{split} {100 * record['dense']['test']['overall']['accuracy']:.2f}.", "",
             _dense_losses(record["dense"]["train"]), "",
             f"| sparsity | method | {split} max ψ_g per seed | mean | Δ vs naive [95 % CI] | train max ψ_g | "
             f"{split} accuracy (Δ vs naive) | fine-tuning s (× naive) |",
             "| ---: | --- | --- | ---: | --- | ---: | --- | --- |"]
    for s, entry in record["sparsities"].items():
        pr = entry["pruned"]
        lines.append(f"| {s} | just pruned | {100 * pr['test']['summary']['max_excess_accuracy_gap']:+.2f} | | | "
                     f"{100 * pr['train']['summary']['max_excess_accuracy_gap']:+.2f} | "
                     f"{100 * pr['test']['overall']['accuracy']:.2f} | |")
        base = entry["methods"].get("naive")

        def col(runs, key, split_name="test", seeds=None):
            """Values per run, in seed order (only `seeds` when given, so pairs line up)."""
            chosen = sorted((r for r in runs if seeds is None or r["seed"] in seeds), key=lambda r: r["seed"])
            return [r[split_name]["summary"][key] if key != "accuracy" else r[split_name]["overall"]["accuracy"]
                    for r in chosen]

        for method, runs in entry["methods"].items():
            runs = sorted(runs, key=lambda r: r["seed"])
            psi = col(runs, "max_excess_accuracy_gap")
            train_psi = col(runs, "max_excess_accuracy_gap", "train")
            acc = col(runs, "accuracy")
            secs = [r["seconds"] for r in runs]
            per_seed = " ".join(f"{100 * v:+.2f}" for v in psi)
            diff = acc_diff = ratio = ""
            if base is not None and method != "naive":
                common = {r["seed"] for r in runs} & {r["seed"] for r in base}
                d = paired(col(runs, "max_excess_accuracy_gap", seeds=common), col(base, "max_excess_accuracy_gap", seeds=common))
                ci = f" [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]" if d["low"] is not None else ""
                diff = f"{100 * d['mean']:+.2f}{ci}"
                a = paired(col(runs, "accuracy", seeds=common), col(base, "accuracy", seeds=common))
                acc_diff = f" ({100 * a['mean']:+.2f})"
                mine = sum(r["seconds"] for r in runs if r["seed"] in common)
                ratio = f" ({mine / sum(r['seconds'] for r in base if r['seed'] in common):.2f}×)"
            lines.append(f"| {s} | {method} | {per_seed} | {100 * sum(psi) / len(psi):+.2f} | {diff} | "
                         f"{100 * sum(train_psi) / len(train_psi):+.2f} | {100 * sum(acc) / len(acc):.2f}{acc_diff} | "
                         f"{sum(secs) / len(secs):.1f}{ratio} |")
    lines += ["", "Checks (computed from the runs above):", "", *[f"- {c}" for c in checks(record)], ""]
    return lines


def checks(record: dict, default: str = DEFAULT_FAIR_METHOD, tolerance: float = FinetuneConfig.tolerance) -> list[str]:
    """The issue's targets, each stated as measured (over the seeds both methods ran)."""
    out = []
    for s, entry in record["sparsities"].items():
        methods = entry["methods"]
        base = methods.get("naive")
        if base is None:
            continue

        def common_of(runs):
            return {r["seed"] for r in runs} & {r["seed"] for r in base}

        def pick(runs, seeds, split, key):
            chosen = sorted((r for r in runs if r["seed"] in seeds), key=lambda r: r["seed"])
            return [r[split]["overall"]["accuracy"] if key == "accuracy" else r[split]["summary"][key] for r in chosen]

        if default in methods:
            runs = methods[default]
            seeds = common_of(runs)
            d = paired(pick(runs, seeds, "test", "max_excess_accuracy_gap"), pick(base, seeds, "test", "max_excess_accuracy_gap"))
            a = paired(pick(runs, seeds, "test", "accuracy"), pick(base, seeds, "test", "accuracy"))
            t = sum(r["seconds"] for r in runs if r["seed"] in seeds) / sum(r["seconds"] for r in base if r["seed"] in seeds)
            excludes = d["high"] is not None and d["high"] < 0
            out.append(f"s={s}: {default} vs naive, {record['evaluated_on']} max ψ_g {100 * d['mean']:+.2f} points "
                       + (f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]" if d["low"] is not None else "")
                       + f" over {d['n']} seeds → {'meets' if d['mean'] <= -0.01 and excludes else 'misses'} the target "
                       f"(≥ 1.0 point lower, interval excluding 0); accuracy {100 * a['mean']:+.2f} points "
                       f"({'within' if abs(a['mean']) <= 0.01 else 'outside'} 1 point); fine-tuning time {t:.2f}× naive "
                       f"({'within' if t <= 1.15 else 'over'} 1.15×)")
        if "ceag" in methods:
            train = [r["train"]["summary"]["max_excess_accuracy_gap"] for r in methods["ceag"]]
            mean = sum(train) / len(train)
            out.append(f"s={s}: CEAG train max ψ_g mean {100 * mean:+.2f} points over {len(train)} seeds "
                       f"({sum(v <= tolerance for v in train)} within ε = {100 * tolerance:.0f} point) → "
                       f"{'meets' if mean <= tolerance else 'misses'} train max ψ_g ≤ ε")
        for method in [m for m in methods if m.startswith("equalized_loss")]:
            runs = methods[method]
            seeds = common_of(runs)
            a = paired(pick(runs, seeds, "test", "accuracy"), pick(base, seeds, "test", "accuracy"))
            out.append(f"s={s}: {method} accuracy {100 * a['mean']:+.2f} points against naive → "
                       f"{'within' if a['mean'] >= -0.02 else 'loses more than'} 2 points")
    return out


def render_merged(payloads: list[dict], out: Path) -> None:
    """One table from runs of the same set-up that split the sparsities or seeds between them
    (run side by side, one per core): their dense models and settings must agree."""
    record = json.loads(json.dumps(payloads[0]["record"]))
    for payload in payloads[1:]:
        other = payload["record"]
        if other["setup"] != record["setup"] or other["dense"] != record["dense"]:
            raise SystemExit("cannot merge runs of different set-ups or dense models")
        for s, entry in other["sparsities"].items():
            if s not in record["sparsities"]:
                record["sparsities"][s] = entry
                continue
            for method, runs in entry["methods"].items():
                kept = record["sparsities"][s]["methods"].setdefault(method, [])
                seeds = {r["seed"] for r in kept}
                kept.extend(r for r in runs if r["seed"] not in seeds)  # a seed run twice counts once
    commands = [p["command"] for p in payloads]
    loads = [r["load"] for e in record["sparsities"].values() for runs in e["methods"].values() for r in runs]
    lines = [f"# Fair repair: {record['setup']}", "", "Produced by", "", *[f"    {c}" for c in commands], "",
             f"Machine: {payloads[0]['machine']}; 1-minute load average during the runs "
             f"{min(loads):.2f}–{max(loads):.2f}.", "", *summarise(record)]
    (out / f"{record['setup']}.md").write_text("\n".join(lines))
    (out / f"{record['setup']}.json").write_text(json.dumps({"commands": commands, "machine": payloads[0]["machine"],
                                                             "record": record}, indent=1, allow_nan=False))
    print("\n".join(lines))


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        render_merged([json.loads(Path(f).read_text()) for f in args.from_results.split(",")], out)
        return
    command = "OMP_NUM_THREADS=%s python bench/fair_repair.py %s" % (os.environ.get("OMP_NUM_THREADS", "?"), " ".join(sys.argv[1:]))
    for setup in args.setups.split(","):
        record = run_setup(setup, args)
        payload = {"command": command, "machine": machine(), "args": vars(args), "record": record}
        (out / f"{setup}.json").write_text(json.dumps(payload, indent=1, allow_nan=False))
        lines = [f"# Fair repair: {setup}", "", f"Produced by `{command}`", "",
                 f"Machine: {payload['machine']}; load average at the end {os.getloadavg()}.", "", *summarise(record)]
        (out / f"{setup}.md").write_text("\n".join(lines))
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
