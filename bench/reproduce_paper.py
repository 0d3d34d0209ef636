"""Reproduce "pruning has a disparate impact" on UTKFace and compare the repairs.

For each set-up (target race / groups race, the paper's; target gender / groups race):
train one dense model, prune it at every sparsity of a grid (layer-wise magnitude, first conv
and last linear dense, BatchNorm recalibrated), then fine-tune with naive / Equalized Loss /
CEAG / held-out CEAG over several seeds, and record per-group reports on train and test.

Data use, the same for every method: a stratified 20 % of the training split is set aside as
the constraint split before the dense model is trained. The dense model and every
fine-tuning primal step see only the remaining 80 % ("train" below); only the held-out
variant's dual step reads the constraint split. Test data is never touched before the final
measurement.

Also: per-group diagnostics at the dense model and the Spearman rank correlation between
the second-order predicted R(a) and the measured R(a) of the just-pruned model.

    python bench/reproduce_paper.py --quick            # a few minutes on 2 cores
    python bench/reproduce_paper.py --out docs/results/paper   # the documented run

Writes results.json and PNG plots into --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # harness/data.py: the UTKFace loader (shared with the tests)

from equiprune.engine.diagnostics import DiagnosticsConfig, diagnose  # noqa: E402
from equiprune.engine.ranking import rank_agreement  # noqa: E402
from equiprune.engine.evaluation import evaluate  # noqa: E402
from equiprune.engine.finetune.config import FinetuneConfig  # noqa: E402
from equiprune.engine.finetune.loop import finetune  # noqa: E402
from equiprune.engine.models.io import load_model, save_safetensors  # noqa: E402
from equiprune.engine.models.registry import ArchitectureSpec, build_model  # noqa: E402
from equiprune.engine.prune import PruningConfig, prune  # noqa: E402
from equiprune.engine.pruning.batchnorm import recalibrate_batchnorm  # noqa: E402
from equiprune.engine.report import build_report  # noqa: E402
from harness.data import load_utkface  # noqa: E402

METHODS = ("naive", "equalized_loss", "ceag", "heldout_ceag", "fair_distill")
SETUPS = {"race": ("race", ("race",)), "gender": ("gender", ("race",))}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small subsample, 2 sparsities, 1 seed")
    p.add_argument("--setups", default="race,gender")
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--arch-kwargs", default="{}", help="JSON keyword arguments for the architecture")
    p.add_argument("--sparsities", default="0.5,0.8,0.9,0.95")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--dense-epochs", type=int, default=15)
    p.add_argument("--ft-epochs", type=int, default=3)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--dual-lr", type=float, default=FinetuneConfig.dual_lr,
                   help="integral gain of the dual step, per epoch (docs/finetuning.md)")
    p.add_argument("--ft-schedule", default="cosine", choices=["cosine", "constant"])
    p.add_argument("--probes", type=int, default=8, help="Hutchinson probes for the diagnostics")
    p.add_argument("--diag-per-group", type=int, default=400,
                   help="training faces per group the diagnostics read (a stratified random subset; 0 = all)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "paper"))
    p.add_argument("--from-results", default=None,
                   help="re-render plots and summary.md from results.json files (comma-separated: their set-ups are merged)")
    args = p.parse_args(argv)
    if args.quick:
        args.sparsities, args.seeds = "0.5,0.9", 1
        args.dense_epochs, args.ft_epochs = 6, 1
        args.max_train, args.max_test = args.max_train or 3000, args.max_test or 1500
        args.probes = min(args.probes, 4)
        args.diag_per_group = min(args.diag_per_group, 200)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        return render(merge_results([json.loads(Path(p).read_text()) for p in args.from_results.split(",")]), out)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    methods = args.methods.split(",")
    results = {"args": vars(args), "setups": {}}
    for setup in args.setups.split(","):
        target, group_by = SETUPS[setup]
        results["setups"][setup] = run_setup(args, target, group_by, sparsities, methods)
        (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    return render(results, out)


def merge_results(parts: list[dict]) -> dict:
    """One results dict from runs of different set-ups (their shared settings must agree)."""
    merged = {"args": dict(parts[0]["args"]), "setups": {}}
    for part in parts:
        for key in ("arch", "arch_kwargs", "dense_epochs", "ft_epochs", "seeds", "tolerance", "dual_lr", "ft_schedule"):
            if part["args"].get(key) != merged["args"].get(key):
                raise SystemExit(f"cannot merge runs that differ in {key}")
        for name, record in part["setups"].items():
            if name not in merged["setups"]:
                merged["setups"][name] = json.loads(json.dumps(record))
                continue
            # The same set-up at other sparsities (the dense model is the same: it is cached).
            into = merged["setups"][name]
            into["sparsities"].update(record["sparsities"])
            into["seconds"] += record["seconds"]
    for record in merged["setups"].values():
        pooled_pred, pooled_meas = {}, {}
        for s, entry in record["sparsities"].items():
            for g, v in entry["prediction"]["predicted_excess_loss"].items():
                pooled_pred[f"{s}/{g}"], pooled_meas[f"{s}/{g}"] = v, entry["prediction"]["measured_excess_loss"][g]
        record["prediction_pooled"] = rank_agreement(pooled_pred, pooled_meas).to_dict()
    merged["commands"] = [_command(part["args"]) for part in parts]
    return merged


def render(results: dict, out: Path) -> dict:
    plot(results, out)
    summary = summarise(results)
    (out / "summary.md").write_text(summary)
    print(summary)
    return results


def run_setup(args, target, group_by, sparsities, methods) -> dict:
    started = time.perf_counter()
    data = load_utkface(target=target, max_train=args.max_train, max_test=args.max_test, seed=0)
    full_train = data.select(group_by, split="train")
    test = data.select(group_by, split="test")
    train, constraint = full_train.split_off(0.2, seed=0)
    print(f"[{target}] train {len(train)}, constraint {len(constraint)}, test {len(test)}", flush=True)

    kwargs = {"num_classes": data.num_classes, "in_channels": 3, "input_size": 32, **json.loads(args.arch_kwargs)}
    spec = ArchitectureSpec(args.arch, kwargs)
    dense, dense_seconds = dense_model(spec, train, args, Path(args.out) / f"dense-{target}.safetensors")
    dense_ev = {"train": evaluate(dense, train, keep_logits=True), "test": evaluate(dense, test), "constraint": evaluate(dense, constraint)}
    record = {
        "target": target, "group_by": list(group_by), "sizes": {"train": len(train), "constraint": len(constraint), "test": len(test)},
        "group_names": list(train.group_names), "arch": spec.to_dict(), "dense_train_seconds": dense_seconds,
        "dense": {k: build_report(v).to_dict() for k, v in dense_ev.items() if k != "constraint"},
        "sparsities": {},
    }
    print(f"[{target}] dense: train acc {dense_ev['train'].accuracy():.3f}, test acc {dense_ev['test'].accuracy():.3f} ({dense_seconds:.0f}s)", flush=True)

    diag_data = train.sample_per_group(args.diag_per_group, seed=0) if args.diag_per_group > 0 else train
    diagnostics = diagnose(dense, diag_data, DiagnosticsConfig(probes=args.probes, power_iterations=10, seed=0))
    record["diagnostics"] = diagnostics.to_dict()
    predicted_all, measured_all = {}, {}

    for sparsity in sparsities:
        outcome = prune(dense, PruningConfig(sparsity=sparsity, scope="layerwise"))
        pruned = outcome.module
        raw_reports = {k: build_report(evaluate(pruned, d), dense_ev[k], tolerance=args.tolerance)
                       for k, d in (("train", train), ("test", test))}
        # Shuffled: UTKFace rows are sorted by file name (age first), and chunk-averaged
        # statistics over sorted chunks would underestimate the variance.
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        recalibrate_batchnorm(pruned, train.inputs[order])
        pruned_reports = {k: build_report(evaluate(pruned, d), dense_ev[k], tolerance=args.tolerance)
                          for k, d in (("train", train), ("test", test))}
        predicted = {p.group: p.predicted for p in diagnostics.predict_excess_loss(dense, diag_data, outcome.masks)}
        # The Taylor prediction removes w_P with the dense BatchNorm statistics: its like-for-like
        # comparison is the just-pruned model before recalibration.
        measured = {g.group: g.excess_loss for g in raw_reports["train"].groups}
        measured_recal = {g.group: g.excess_loss for g in pruned_reports["train"].groups}
        for g in predicted:
            predicted_all[f"{sparsity}/{g}"], measured_all[f"{sparsity}/{g}"] = predicted[g], measured[g]
        entry = {
            "measured_sparsity": outcome.sparsity.prunable_sparsity,
            "pruned_before_recalibration": {k: v.to_dict() for k, v in raw_reports.items()},
            "pruned": {k: v.to_dict() for k, v in pruned_reports.items()},
            "prediction": {"predicted_excess_loss": predicted, "measured_excess_loss": measured,
                           "rank_agreement": rank_agreement(predicted, measured).to_dict(),
                           "measured_excess_loss_after_recalibration": measured_recal,
                           "rank_agreement_after_recalibration": rank_agreement(predicted, measured_recal).to_dict()},
            "methods": {},
        }
        print(f"[{target}] s={sparsity}: pruned test max psi {_fmt(pruned_reports['test'].summary.max_excess_accuracy_gap)}"
              f" (before BN recalibration {_fmt(raw_reports['test'].summary.max_excess_accuracy_gap)}),"
              f" spearman(pred, measured R) {_fmt(entry['prediction']['rank_agreement']['spearman'])}", flush=True)
        for method in methods:
            runs = []
            for seed in range(args.seeds):
                model = copy.deepcopy(pruned)
                config = FinetuneConfig(method=method, epochs=args.ft_epochs, seed=seed, tolerance=args.tolerance,
                                        dual_lr=args.dual_lr, lr_schedule=args.ft_schedule)
                t0 = time.perf_counter()
                result = finetune(model, outcome.masks, train, config, train_reference=dense_ev["train"],
                                  constraint=constraint, constraint_reference=dense_ev["constraint"], teacher=dense)
                seconds = time.perf_counter() - t0
                reports = {k: build_report(evaluate(model, d), dense_ev[k], tolerance=args.tolerance)
                           for k, d in (("train", train), ("test", test))}
                runs.append({"seed": seed, "seconds": seconds, "final_multipliers": result.epochs[-1].multipliers,
                             **{k: v.to_dict() for k, v in reports.items()}})
                print(f"[{target}] s={sparsity} {method:>14} seed {seed}: "
                      f"train max psi {_fmt(reports['train'].summary.max_excess_accuracy_gap)}, "
                      f"test max psi {_fmt(reports['test'].summary.max_excess_accuracy_gap)}, "
                      f"test acc {reports['test'].overall.accuracy:.3f} ({seconds:.0f}s)", flush=True)
            entry["methods"][method] = runs
        record["sparsities"][str(sparsity)] = entry
    record["prediction_pooled"] = rank_agreement(predicted_all, measured_all).to_dict()
    record["seconds"] = time.perf_counter() - started
    return record


def dense_model(spec, train, args, cache: Path):
    """Train the dense model, or load it from `cache` when an earlier run with the same
    architecture, data size and epochs saved it (the training is deterministic)."""
    key = json.dumps({"spec": spec.to_dict(), "n": len(train), "epochs": args.dense_epochs})
    if cache.exists():
        loaded = load_model(cache)
        if loaded.spec == spec and cache.with_suffix(".key").read_text() == key:
            print(f"dense model loaded from {cache}", flush=True)
            return loaded.module, 0.0
    torch.manual_seed(0)
    dense = build_model(spec)
    config = FinetuneConfig(method="naive", epochs=args.dense_epochs, lr=0.05, lr_schedule="cosine", augment_hflip=True, seed=0)
    started = time.perf_counter()
    finetune(dense, {}, train, config)
    seconds = time.perf_counter() - started
    save_safetensors(dense, spec, cache)
    cache.with_suffix(".key").write_text(key)
    return dense, seconds


def _fmt(x):
    return "n/a" if x is None else f"{x:+.3f}"


def _mean_std(values):
    t = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    if t.numel() == 0:
        return None, None
    return float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0


def summary_rows(results):
    """(setup, sparsity, method, split) → mean/std of max ψ_g and overall accuracy over seeds."""
    rows = []
    for setup, rec in results["setups"].items():
        for s, entry in rec["sparsities"].items():
            for split in ("train", "test"):
                pr = entry["pruned"][split]
                rows.append((setup, float(s), "just_pruned", split, pr["summary"]["max_excess_accuracy_gap"], 0.0,
                             pr["overall"]["accuracy"], 0.0))
                for method, runs in entry["methods"].items():
                    psi = _mean_std([r[split]["summary"]["max_excess_accuracy_gap"] for r in runs])
                    acc = _mean_std([r[split]["overall"]["accuracy"] for r in runs])
                    rows.append((setup, float(s), method, split, *psi, *acc))
    return rows


def summarise(results) -> str:
    """Markdown: the table over seeds, the rank correlations, and the issue's checks."""
    args = results["args"]
    lines = ["# Paper reproduction on UTKFace — generated summary", "",
             "Produced by:", "", *[f"    {c}" for c in results.get("commands", [_command(args)])], "",
             f"Model {args['arch']} {args['arch_kwargs']}, dense {args['dense_epochs']} epochs, fine-tuning "
             f"{args['ft_epochs']} epochs ({args.get('ft_schedule', 'constant')} learning rate from 1e-2), seeds 0..{args['seeds'] - 1}, ε = {args['tolerance']}, dual lr {args['dual_lr']}.",
             "Max ψ_g and accuracy in points, mean ± sd over seeds (just-pruned has one value: pruning is deterministic).", ""]
    for setup, rec in results["setups"].items():
        dense_test = rec["dense"]["test"]["overall"]["accuracy"]
        lines += [f"## target {rec['target']}, groups {'&'.join(rec['group_by'])}", "",
                  f"Sizes: {rec['sizes']}. Dense accuracy: train {100 * rec['dense']['train']['overall']['accuracy']:.1f}, "
                  f"test {100 * dense_test:.1f}. Run time {rec['seconds'] / 60:.1f} min.", "",
                  "| sparsity | method | train max ψ_g | test max ψ_g | test accuracy |", "| ---: | --- | ---: | ---: | ---: |"]
        rows = summary_rows({"setups": {setup: rec}})
        by_key = {(r[1], r[2], r[3]): r for r in rows}
        for s in sorted({r[1] for r in rows}):
            for method in ["just_pruned", *METHODS]:
                if (s, method, "test") not in by_key:
                    continue
                tr, te = by_key[(s, method, "train")], by_key[(s, method, "test")]
                lines.append(f"| {s:.2f} | {method} | {_pm(tr[4], tr[5])} | {_pm(te[4], te[5])} | {_pm(te[6], te[7], signed=False)} |")
        lines += ["", "Second-order predicted R(a) against the measured R(a) of the just-pruned model on the training "
                  "faces (rank correlation over groups); before BatchNorm recalibration is the like-for-like "
                  "comparison, after it is what the fine-tuning starts from:", ""]
        for s, entry in sorted(rec["sparsities"].items(), key=lambda kv: float(kv[0])):
            ra = entry["prediction"]["rank_agreement"]
            after = entry["prediction"].get("rank_agreement_after_recalibration")
            lines.append(f"- sparsity {s}: Spearman {_num(ra['spearman'])}, Kendall {_num(ra['kendall'])} ({ra['n_groups']} groups)"
                         + (f"; after recalibration Spearman {_num(after['spearman'])}" if after else ""))
        pooled = rec["prediction_pooled"]
        lines.append(f"- pooled over groups × sparsities: Spearman {_num(pooled['spearman'])} ({pooled['n_groups']} points)")
        lines += ["", "Just-pruned test max ψ_g before → after BatchNorm recalibration: " + ", ".join(
            f"{s}: {_num(100 * e['pruned_before_recalibration']['test']['summary']['max_excess_accuracy_gap'])} → "
            f"{_num(100 * e['pruned']['test']['summary']['max_excess_accuracy_gap'])}"
            for s, e in sorted(rec["sparsities"].items(), key=lambda kv: float(kv[0]))) + " points."]
        lines += ["", "Checks (computed from the runs above):", ""] + [f"- {c}" for c in checks(rec, args["tolerance"])] + [""]
    return "\n".join(lines)


def checks(rec, tolerance) -> list[str]:
    """The issue's claims, each stated as measured, with the margin."""
    out = []
    sparsities = sorted(rec["sparsities"], key=float)
    pruned_psi = [rec["sparsities"][s]["pruned"]["test"]["summary"]["max_excess_accuracy_gap"] for s in sparsities]
    widening = all(b >= a for a, b in zip(pruned_psi, pruned_psi[1:]))
    out.append(f"just-pruned test max ψ_g by sparsity {', '.join(f'{s}: {_num(100 * p)}' for s, p in zip(sparsities, pruned_psi))}"
               f" → {'widens monotonically' if widening else 'does not widen monotonically'}")
    for s in sparsities:
        methods = rec["sparsities"][s]["methods"]
        if "ceag" in methods:
            train = [r["train"]["summary"]["max_excess_accuracy_gap"] for r in methods["ceag"]]
            within = sum(p <= tolerance for p in train)
            out.append(f"s={s}: CEAG train max ψ_g within ε in {within}/{len(train)} seeds (mean {_num(100 * sum(train) / len(train))} points)")
        if "naive" in methods and "heldout_ceag" in methods:
            naive = _mean_std([r["test"]["summary"]["max_excess_accuracy_gap"] for r in methods["naive"]])[0]
            held = _mean_std([r["test"]["summary"]["max_excess_accuracy_gap"] for r in methods["heldout_ceag"]])[0]
            acc_n = _mean_std([r["test"]["overall"]["accuracy"] for r in methods["naive"]])[0]
            acc_h = _mean_std([r["test"]["overall"]["accuracy"] for r in methods["heldout_ceag"]])[0]
            gap = 100 * abs(naive - held)
            verdict = f"beats naive by {gap:.2f} points" if held < naive else f"misses naive by {gap:.2f} points"
            out.append(f"s={s}: held-out CEAG test max ψ_g {_num(100 * held)} vs naive {_num(100 * naive)} → {verdict}; "
                       f"test accuracy {100 * acc_h:.2f} vs {100 * acc_n:.2f} "
                       f"({'within' if abs(acc_h - acc_n) <= 0.01 else 'outside'} 1 point)")
        if "naive" in methods and "ceag" in methods:
            naive = _mean_std([r["test"]["summary"]["max_excess_accuracy_gap"] for r in methods["naive"]])[0]
            ceag = _mean_std([r["test"]["summary"]["max_excess_accuracy_gap"] for r in methods["ceag"]])[0]
            out.append(f"s={s}: CEAG test max ψ_g {_num(100 * ceag)} vs naive {_num(100 * naive)}")
    return out


def _command(args) -> str:
    """The command line that reproduces a run with these arguments."""
    skip = {"quick", "from_results"}
    words = ["--quick"] if args.get("quick") else []
    words += [f"--{k.replace('_', '-')} '{v}'" if k == "arch_kwargs" else f"--{k.replace('_', '-')} {v}"
              for k, v in args.items() if k not in skip and v is not None and v is not False]
    return "OMP_NUM_THREADS=1 python bench/reproduce_paper.py " + " ".join(words)


def _pm(mean, sd, signed=True):
    return "n/a" if mean is None else f"{100 * mean:{'+' if signed else ''}.2f} ± {100 * sd:.2f}"


def _num(x):
    return "n/a" if x is None else f"{x:+.2f}"


def plot(results, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for setup, rec in results["setups"].items():
        sparsities = sorted(float(s) for s in rec["sparsities"])
        groups = rec["group_names"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, stage in zip(axes, ("just_pruned", "naive")):
            for g in groups:
                ys = []
                for s in sparsities:
                    entry = rec["sparsities"][str(s)]
                    reports = [entry["pruned"]["test"]] if stage == "just_pruned" else [r["test"] for r in entry["methods"].get("naive", [])]
                    accs = [next(x for x in r["groups"] if x["group"] == g)["accuracy"] for r in reports]
                    ys.append(sum(accs) / len(accs) if accs else float("nan"))
                dense_acc = next(x for x in rec["dense"]["test"]["groups"] if x["group"] == g)["accuracy"]
                ax.plot([0.0] + sparsities, [dense_acc] + ys, marker="o", label=g)
            ax.set_title(f"target {rec['target']}: test accuracy per group ({stage.replace('_', ' ')})")
            ax.set_xlabel("sparsity")
            ax.set_ylabel("accuracy")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{setup}_group_accuracy.png", dpi=110)
        plt.close(fig)

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        rows = [r for r in summary_rows(results) if r[0] == setup]
        for ax, split in zip(axes, ("train", "test")):
            for method in ["just_pruned", *METHODS]:
                pts = sorted((r[1], r[4], r[5]) for r in rows if r[2] == method and r[3] == split and r[4] is not None)
                if pts and method != "just_pruned":
                    xs, ys, sd = zip(*pts)
                    ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in sd], marker="o", capsize=3, label=method)
            ax.axhline(100 * results["args"]["tolerance"], color="grey", linestyle="--", label="ε")
            ax.set_title(f"target {rec['target']}: max ψ_g after fine-tuning ({split})")
            ax.set_xlabel("sparsity")
            ax.set_ylabel("max ψ_g (points)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{setup}_max_psi.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
