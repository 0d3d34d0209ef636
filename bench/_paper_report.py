"""Tables, checks and plots of bench/reproduce_paper.py's results (results.json → summary.md, PNGs).

Kept apart from the runner so that `--from-results` and the tests read results without the
training code, and so that the runner stays short.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from equiprune.engine.ranking import rank_agreement

METHODS = ("naive", "equalized_loss", "ceag", "heldout_ceag", "fair_distill")


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
    skip = {"quick", "from_results", "jobs"}  # jobs: how many processes, not what they compute
    words = ["--quick"] if args.get("quick") else []
    for k, v in args.items():
        flag = k.replace("_", "-")
        if k in skip or v is None:
            continue
        words.append((f"--{flag}" if v else f"--no-{flag}") if isinstance(v, bool)
                     else f"--{flag} '{v}'" if k == "arch_kwargs" else f"--{flag} {v}")
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
