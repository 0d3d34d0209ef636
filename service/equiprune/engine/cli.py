"""`equiprune-engine`: run the engine in-process, without the service.

    equiprune-engine demo --out runs/demo
    equiprune-engine train --arch small_cnn --arch-kwargs '{"num_classes": 10, "in_channels": 1, "input_size": 8}' \
        --dataset d.npz --out dense.safetensors
    equiprune-engine compress --model dense.safetensors --dataset d.npz --group-by group \
        --sparsity 0.9 --out runs/fair
    equiprune-engine budget --model dense.safetensors --dataset d.npz --group-by group --tolerance 2

--tolerance is ε in percentage points (2 = 0.02; 0.5pp for half a point), as in `equiprune`.
The tables and words are `equiprune`'s (equiprune.text); --json prints the outcome as JSON
instead, --verbose every progress event as a JSON line.

Errors in the input are printed as `error: <field>: <problem>` with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from equiprune.text import reports as text
from equiprune.text.tolerance import tolerance_argument, tolerance_help

from .errors import EngineError
from .finetune.config import DEFAULT_FAIR_METHOD, METHODS, FinetuneConfig


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except EngineError as err:
        print(f"error: {err.field}: {err.problem}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    from .budget import BudgetConfig
    from .jobs import DataConfig, TrainConfig
    from .demo_data import DEMO_SPARSITY
    from .prune import PruningConfig

    parser = argparse.ArgumentParser(prog="equiprune-engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True, metavar="command")
    # Every default is the engine config's own (flags left out are not passed on).
    ft, data, train_defaults = FinetuneConfig(), DataConfig(), TrainConfig(architecture="mlp")

    demo = sub.add_parser("demo", help="the whole story on scikit-learn's digits (offline)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--sparsity", type=float, default=DEMO_SPARSITY, help=f"default {DEMO_SPARSITY}")
    demo.set_defaults(run=_demo)

    train = sub.add_parser("train", help="train a dense model from scratch")
    train.add_argument("--arch", required=True)
    train.add_argument("--arch-kwargs", default="{}", help="JSON object of architecture keyword arguments")
    train.add_argument("--dataset", required=True)
    train.add_argument("--split", default=None, help="training split (default: 'train' if the dataset has one, else every row)")
    train.add_argument("--epochs", type=int, help=f"default {train_defaults.epochs}")
    train.add_argument("--lr", type=float, help=f"default {train_defaults.lr}")
    train.add_argument("--seed", type=int)
    train.add_argument("--out", required=True, help="path of the .safetensors file to write")
    train.set_defaults(run=_train)

    for name, helptext in (("compress", "prune, measure, diagnose and fine-tune"),
                           ("budget", "find the highest sparsity within tolerance")):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("--model", required=True, help=".safetensors (with its architecture) or .pt2")
        cmd.add_argument("--dataset", required=True, help=".npz in the documented dataset format")
        cmd.add_argument("--group-by", action="append", required=True, help="group attribute; repeat for intersections")
        cmd.add_argument("--train-split", help="default: 'train' if the dataset has one, else every row")
        cmd.add_argument("--eval-split", help="default: 'test' if the dataset has one; '' for none")
        cmd.add_argument("--constraint-split", default=None,
                         help="split for the held-out steps (heldout_ceag, fair_distill) (default: 'constraint' if the "
                              f"dataset has one, else {data.constraint_fraction * 100:.0f}%% of the training split)")
        cmd.add_argument("--kind", choices=["unstructured", "n_m", "structured"], help="default unstructured")
        cmd.add_argument("--scope", choices=["layerwise", "global"], help="default layerwise")
        cmd.add_argument("--schedule", choices=["one_shot", "gradual"], help="default one_shot")
        cmd.add_argument("--prune-first-and-last", dest="keep_first_and_last", action="store_false", default=None,
                         help="prune the first and the last layer too (kept dense by default)")
        cmd.add_argument("--method", choices=[*METHODS, "none"],
                         help=f"fine-tuning objective (default: {DEFAULT_FAIR_METHOD}, the fair default; none: no fine-tuning)")
        cmd.add_argument("--epochs", type=int, help=f"fine-tuning epochs (default {ft.epochs})")
        cmd.add_argument("--lr", type=float, help=f"default {ft.lr}")
        cmd.add_argument("--dual-lr", type=float,
                         help=f"integral gain of the dual step: multiplier change per epoch per unit violation (default {ft.dual_lr})")
        cmd.add_argument("--tolerance", type=tolerance_argument, help=tolerance_help(data.tolerance))
        cmd.add_argument("--min-group-size", type=int, help=f"default {data.min_group_size}")
        cmd.add_argument("--seed", type=int)
        cmd.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cuda when available)")
        cmd.add_argument("--out", required=True, help="output folder")
        cmd.add_argument("--json", action="store_true", help="print the outcome as JSON")
        cmd.add_argument("--verbose", action="store_true", help="print every progress event as a JSON line")
        if name == "compress":
            cmd.add_argument("--sparsity", type=float, help=f"default {PruningConfig.sparsity}")
            cmd.add_argument("--diagnose", action="store_true", help="per-group gradient/Hessian diagnostics and predicted R(a)")
            cmd.set_defaults(run=_compress)
        else:
            b = BudgetConfig()
            cmd.add_argument("--low", type=float, help=f"first probe and bottom of the bracket; when it breaks ε the "
                                                        f"search halves it (default {b.low})")
            cmd.add_argument("--high", type=float, help=f"top of the bracket (default {b.high})")
            cmd.add_argument("--resolution", type=float, help=f"default {b.resolution}")
            cmd.add_argument("--max-probes", type=int, help=f"default {b.max_probes}")
            cmd.add_argument("--require-confidence", action="store_true",
                             help="judge every group by its ψ_g upper 95%% bound, not the point estimate")
            cmd.set_defaults(run=_budget)
    return parser


def _given(args, **names) -> dict:
    """{config field: value} for the flags given; the rest keep the config's defaults."""
    return {field: getattr(args, flag) for field, flag in names.items() if getattr(args, flag, None) is not None}


def _spec_from_args(args, kind: str):
    """The job spec a command line describes."""
    from .budget import BudgetConfig
    from .diagnostics import DiagnosticsConfig
    from .jobs import DataConfig, JobSpec, TrainConfig
    from .jobs.spec import json_object
    from .prune import PruningConfig

    if kind == "train":
        return JobSpec(kind="train", dataset=args.dataset, data=DataConfig(**_given(args, train_split="split")),
                       train=TrainConfig(architecture=args.arch, architecture_kwargs=json_object(args.arch_kwargs, "train.architecture_kwargs"),
                                         **_given(args, epochs="epochs", lr="lr", seed="seed")))
    finetune = None if args.method == "none" else FinetuneConfig(**_given(
        args, method="method", epochs="epochs", lr="lr", dual_lr="dual_lr", seed="seed"))
    diagnose = getattr(args, "diagnose", False)
    if kind == "compress":
        kind = "prune_and_finetune" if finetune is not None else "prune"
    return JobSpec(
        kind=kind, dataset=args.dataset, model=args.model,
        data=DataConfig(group_by=tuple(args.group_by), **_given(
            args, train_split="train_split", eval_split="eval_split", constraint_split="constraint_split",
            tolerance="tolerance", min_group_size="min_group_size")),
        pruning=PruningConfig(**_given(args, kind="kind", sparsity="sparsity", scope="scope", schedule="schedule",
                                       keep_first_and_last="keep_first_and_last")),
        finetune=finetune, diagnostics=DiagnosticsConfig() if diagnose else None,
        budget=BudgetConfig(**_given(args, low="low", high="high", resolution="resolution", max_probes="max_probes"),
                            require_confidence=args.require_confidence) if kind == "budget_search" else None)


def _run(args, kind: str, work_dir: Path):
    """Check the spec, then run it through the engine's job API, printing progress."""
    from .jobs import JobInputs, run_job

    spec = _spec_from_args(args, kind)
    inputs = JobInputs(dataset=args.dataset, model=spec.model, work_dir=work_dir, device=getattr(args, "device", None))
    show = None if getattr(args, "json", False) else _event_printer() if getattr(args, "verbose", False) \
        else _progress_printer()
    outcome = run_job(spec, inputs, show)
    inputs.checkpoint.unlink(missing_ok=True)  # the run is complete: nothing left to resume
    return spec, outcome


def _train(args) -> int:
    import tempfile

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".equiprune-train-") as work:
        _, outcome = _run(args, "train", Path(work))
        (Path(work) / outcome.files[0].path).replace(out)
    print(f"wrote {out}")
    return 0


def _compress(args) -> int:
    out = Path(args.out)
    _, outcome = _run(args, "compress", out)
    if args.json:
        print(json.dumps(outcome.to_dict(), allow_nan=False))
        return 0
    print()
    print(format_comparison(outcome))
    if outcome.diagnostics is not None:
        print("\n" + text.diagnostics_table(outcome.diagnostics))
    print("\noutputs: " + ", ".join(f"{f.role}={out / f.path}" for f in outcome.files))
    return 0


def _budget(args) -> int:
    _, outcome = _run(args, "budget_search", Path(args.out))
    if args.json:
        print(json.dumps(outcome.to_dict(), allow_nan=False))
        return 0
    print()
    print(text.sweep_table(outcome.sweep, outcome.best_sparsity, outcome.budget_shortfall))
    print(f"\nreport: {Path(args.out) / outcome.files[0].path}")
    return 0


def _demo(args) -> int:
    """The service demo's set-up, in-process and fair only (docs/results/demo-setup.md)."""
    from . import demo_data as demo

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset_path = out / "digits.npz"
    demo.write_digits_sample(dataset_path)  # as `sample:digits`, with its held-out constraint split
    print(f"dataset: scikit-learn digits with a synthetic group attribute → {dataset_path}")
    model_path = out / "dense.safetensors"
    _train(_parser().parse_args([
        "train", "--arch", demo.DEMO_ARCHITECTURE, "--arch-kwargs", json.dumps(demo.DEMO_ARCHITECTURE_KWARGS),
        "--dataset", str(dataset_path), "--epochs", str(demo.DEMO_TRAIN_EPOCHS), "--lr", str(demo.DEMO_TRAIN_LR),
        "--out", str(model_path)]))
    keep = [] if demo.DEMO_KEEP_FIRST_AND_LAST else ["--prune-first-and-last"]
    return _compress(_parser().parse_args([
        "compress", "--model", str(model_path), "--dataset", str(dataset_path),
        *[w for g in demo.DEMO_GROUP_BY for w in ("--group-by", g)], "--sparsity", str(args.sparsity), *keep,
        "--epochs", str(demo.DEMO_FINETUNE_EPOCHS), "--min-group-size", str(demo.DEMO_MIN_GROUP_SIZE),
        "--tolerance", f"{demo.DEMO_TOLERANCE * 100:g}", "--out", str(out / "compressed")]))


def format_comparison(outcome) -> str:
    """The client's per-group table (dense → pruned → fine-tuned) on the evaluation split (or
    training, when there is none), then the measured sparsity and the notes."""
    splits = list(dict.fromkeys(r.split for r in outcome.reports))
    split = splits[-1] if splits else None  # the evaluation split comes after training when there is one
    lines = [text.comparison_table(text.stage_reports(outcome.reports, split), split)]
    if outcome.measured_sparsity is not None:
        lines.append(f"measured sparsity of prunable weights: {outcome.measured_sparsity:.3f}")
    lines.extend(f"note: {n}" for n in outcome.notes)
    return "\n".join(lines)


def _event_printer():
    """--verbose: every event, whole, as one JSON line."""
    def show(event) -> None:
        print(json.dumps(event.to_dict(), allow_nan=False), flush=True)

    return show


def _progress_printer():
    """Print each phase once, and one line per finished epoch (not per step: logs stay short)."""
    from equiprune.text.formats import pct

    last = [None]

    def show(event) -> None:
        if event.step is not None:
            if event.ends_epoch:
                lam = ", ".join(f"{k} {v:.3f}" for k, v in event.group_multipliers.items() if v)
                print(f"  {event.phase} epoch {event.epoch + 1}/{event.epochs}: last batch loss "
                      f"{event.metrics.get('loss', float('nan')):.3f}" + (f"; multipliers {lam}" if lam else ""), flush=True)
        elif event.report is not None:
            r = event.report
            print(f"  {text.STAGE_LABELS.get(r.stage, r.stage)} on {r.split or 'all rows'}: accuracy "
                  f"{pct(r.report.overall.accuracy)}, worst group {r.report.summary.worst_group or '-'}", flush=True)
        elif (event.phase, event.message) != last[0]:
            print(f"{event.phase}" + (f": {event.message}" if event.message else ""), flush=True)
        last[0] = (event.phase, event.message)

    return show


if __name__ == "__main__":
    sys.exit(main())
