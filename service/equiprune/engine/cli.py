"""`equiprune-engine`: run the engine in-process, without the service.

    equiprune-engine demo --out runs/demo
    equiprune-engine train --arch small_cnn --arch-kwargs '{"num_classes": 10, "in_channels": 1, "input_size": 8}' \
        --dataset d.npz --out dense.safetensors
    equiprune-engine compress --model dense.safetensors --dataset d.npz --group-by group \
        --sparsity 0.9 --out runs/fair
    equiprune-engine budget --model dense.safetensors --dataset d.npz --group-by group --tolerance 0.02

Errors in the input are printed as `error: <field>: <problem>` with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    parser = argparse.ArgumentParser(prog="equiprune-engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True, metavar="command")

    demo = sub.add_parser("demo", help="the whole story on scikit-learn's digits (offline)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--sparsity", type=float, default=0.9)
    demo.set_defaults(run=_demo)

    train = sub.add_parser("train", help="train a dense model from scratch")
    train.add_argument("--arch", required=True)
    train.add_argument("--arch-kwargs", default="{}", help="JSON object of architecture keyword arguments")
    train.add_argument("--dataset", required=True)
    train.add_argument("--split", default="train")
    train.add_argument("--epochs", type=int, default=15)
    train.add_argument("--lr", type=float, default=0.05)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, help="path of the .safetensors file to write")
    train.set_defaults(run=_train)

    for name, helptext in (("compress", "prune, measure, diagnose and fine-tune"),
                           ("budget", "find the highest sparsity within tolerance")):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("--model", required=True, help=".safetensors (with its architecture) or .pt2")
        cmd.add_argument("--dataset", required=True, help=".npz in the documented dataset format")
        cmd.add_argument("--group-by", action="append", required=True, help="group attribute; repeat for intersections")
        cmd.add_argument("--train-split", default="train")
        cmd.add_argument("--eval-split", default="test")
        cmd.add_argument("--constraint-split", default=None,
                         help="split for the held-out dual steps (heldout_ceag, fair_distill) (default: 'constraint' if the dataset has one, "
                              "else 20%% of the training split)")
        cmd.add_argument("--kind", default="unstructured", choices=["unstructured", "n_m", "structured"])
        cmd.add_argument("--scope", default="layerwise", choices=["layerwise", "global"])
        cmd.add_argument("--schedule", default="one_shot", choices=["one_shot", "gradual"])
        cmd.add_argument("--method", default=DEFAULT_FAIR_METHOD, choices=[*METHODS, "none"],
                         help=f"fine-tuning objective (default: {DEFAULT_FAIR_METHOD}, the fair default; none: no fine-tuning)")
        cmd.add_argument("--epochs", type=int, default=3)
        cmd.add_argument("--lr", type=float, default=1e-2)
        cmd.add_argument("--dual-lr", type=float, default=FinetuneConfig.dual_lr,
                         help="integral gain of the dual step: multiplier change per epoch per unit violation")
        cmd.add_argument("--tolerance", type=float, default=0.01)
        cmd.add_argument("--min-group-size", type=int, default=30)
        cmd.add_argument("--seed", type=int, default=0)
        cmd.add_argument("--device", default=None)
        cmd.add_argument("--out", required=True, help="output folder")
        cmd.add_argument("--json", action="store_true", help="print the full result as JSON")
        if name == "compress":
            cmd.add_argument("--sparsity", type=float, default=0.9)
            cmd.add_argument("--diagnose", action="store_true", help="per-group gradient/Hessian diagnostics and predicted R(a)")
            cmd.set_defaults(run=_compress)
        else:
            cmd.add_argument("--low", type=float, default=0.5)
            cmd.add_argument("--high", type=float, default=0.95)
            cmd.add_argument("--resolution", type=float, default=0.025)
            cmd.add_argument("--max-probes", type=int, default=8)
            cmd.add_argument("--require-confidence", action="store_true",
                             help="judge every group by its ψ_g upper 95%% bound, not the point estimate")
            cmd.set_defaults(run=_budget)
    return parser


def _train(args) -> int:
    from .dataset import load_dataset
    from .finetune.config import FinetuneConfig
    from .finetune.loop import finetune
    from .dataset import validate_for_model
    from .fit import check_architecture_fits
    from .models.io import save_safetensors
    from .models.registry import ArchitectureSpec, build_model

    import torch

    dataset = load_dataset(args.dataset)
    spec = ArchitectureSpec(args.arch, _json_object(args.arch_kwargs, "arch_kwargs"))
    # Before any work: the architecture within the limits, taking these samples, with an
    # output for every class (measured on the meta device, nothing allocated).
    validate_for_model(dataset, check_architecture_fits(spec, dataset, field="arch_kwargs").outputs)
    torch.manual_seed(args.seed)
    model = build_model(spec)
    # Training needs no grouping; any attribute will do, and small groups do not matter here.
    data = dataset.select((dataset.attribute_names[0],), split=args.split if dataset.split_names else None,
                          min_group_size=0)
    show = _progress_printer()
    finetune(model, {}, data, FinetuneConfig(epochs=args.epochs, lr=args.lr, seed=args.seed),
             on_progress=lambda event: show("train_step", vars(event)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(model, spec, args.out)
    print(f"wrote {args.out}")
    return 0


def _job_from_args(args, sparsity: float):
    from .diagnostics import DiagnosticsConfig
    from .finetune.config import FinetuneConfig
    from .pipeline import CompressionJob
    from .prune import PruningConfig

    finetune = None if args.method == "none" else FinetuneConfig(
        method=args.method, epochs=args.epochs, lr=args.lr, dual_lr=args.dual_lr, tolerance=args.tolerance, seed=args.seed)
    return CompressionJob(
        group_by=tuple(args.group_by), train_split=args.train_split, eval_split=args.eval_split or None,
        constraint_split=args.constraint_split,
        pruning=PruningConfig(kind=args.kind, sparsity=sparsity, scope=args.scope, schedule=args.schedule),
        finetune=finetune,
        diagnostics=DiagnosticsConfig() if getattr(args, "diagnose", False) else None,
        tolerance=args.tolerance, min_group_size=args.min_group_size, device=args.device,
    )


def _compress(args) -> int:
    from .dataset import load_dataset
    from .fit import check_model_fits
    from .models.io import load_model
    from .pipeline import run_compression, write_outputs

    loaded = load_model(args.model)
    dataset = load_dataset(args.dataset)
    job = _job_from_args(args, args.sparsity)
    check_model_fits(loaded.module, dataset, field="model")
    checkpoint = Path(args.out) / "checkpoint.pt"
    result = run_compression(loaded, dataset, job, checkpoint_path=checkpoint,
                             on_progress=None if args.json else _progress_printer())
    example = dataset.select(job.group_by, split=job.train_split, min_group_size=0).inputs[:2]
    written = write_outputs(result, loaded, args.out, example)
    checkpoint.unlink(missing_ok=True)  # the run is complete: nothing left to resume
    if args.json:
        print(json.dumps({"result": result.to_dict(), "artifacts": written}, allow_nan=False))
    else:
        print()
        print(format_comparison(result))
        if result.prediction is not None:
            from .ranking import prediction_note

            print("\n" + prediction_note(result.prediction))
        print("\nartifacts: " + ", ".join(f"{k}={v}" for k, v in written.items()))
    return 0


def _budget(args) -> int:
    import copy
    import dataclasses

    from .budget import BudgetConfig, search_budget
    from .dataset import load_dataset
    from .errors import InvalidConfigError
    from .fit import check_model_fits
    from .models.io import load_model
    from .pipeline import run_compression

    if args.kind == "n_m":
        raise InvalidConfigError("budget.kind", "N:M pruning has a fixed sparsity (n/m); there is nothing to search")
    loaded = load_model(args.model)
    dataset = load_dataset(args.dataset)
    check_model_fits(loaded.module, dataset, field="model")
    config = BudgetConfig(tolerance=args.tolerance, low=args.low, high=args.high, resolution=args.resolution,
                          max_probes=args.max_probes, require_confidence=args.require_confidence)

    def probe(sparsity: float):
        # Every probe starts from the untouched dense model.
        fresh = dataclasses.replace(loaded, module=copy.deepcopy(loaded.module))
        result = run_compression(fresh, dataset, _job_from_args(args, sparsity))
        final = result.finetuned or result.pruned
        return final.eval or final.train

    # Progress goes to stderr so that `--json` output stays parseable.
    result = search_budget(probe, config, on_probe=lambda p: print(
        f"sparsity {p.sparsity:.3f}: accuracy {p.accuracy:.3f}, max ψ_g {_pts(p.max_excess_accuracy_gap)} → "
        f"{'within' if p.met else 'beyond'} tolerance", file=sys.stderr, flush=True))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "budget.json").write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    print(json.dumps(result.to_dict()) if args.json else f"highest sparsity within tolerance: {result.best_sparsity}")
    return 0


def _demo(args) -> int:
    from .demo_data import digits_group_dataset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset_path = out / "digits.npz"
    from .dataset import save_dataset

    save_dataset(digits_group_dataset(), dataset_path)
    print(f"dataset: scikit-learn digits with a synthetic group attribute → {dataset_path}")
    kwargs = '{"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [16, 32]}'
    model_path = out / "dense.safetensors"
    _train(_parser().parse_args(["train", "--arch", "small_cnn", "--arch-kwargs", kwargs, "--dataset",
                                 str(dataset_path), "--epochs", "20", "--out", str(model_path)]))
    return _compress(_parser().parse_args([
        "compress", "--model", str(model_path), "--dataset", str(dataset_path), "--group-by", "cohort",
        "--sparsity", str(args.sparsity), "--epochs", "5", "--min-group-size", "10",
        "--tolerance", "0.02", "--out", str(out / "compressed")]))


def format_comparison(result) -> str:
    """A per-group table: dense → pruned → fine-tuned on the evaluation split (or train)."""
    def pick(stage):
        return None if stage is None else (stage.eval or stage.train)

    dense, pruned, tuned = pick(result.dense), pick(result.pruned), pick(result.finetuned)
    header = f"{'group':<18}{'n':>6}  {'dense':>7}  {'pruned':>7}  {'ψ_g':>7}  {'tuned [95% CI]':>22}  {'ψ_g':>7}"
    lines = [header, "-" * len(header)]
    for g in dense.groups:
        p = pruned.group(g.group) if pruned else None
        t = tuned.group(g.group) if tuned else None
        ci = f"{_pct(t.accuracy)} [{_pct(t.accuracy_ci_low)},{_pct(t.accuracy_ci_high)}]" if t and t.n else "-"
        lines.append(f"{g.group:<18}{g.n:>6}  {_pct(g.accuracy):>7}  {_pct(p.accuracy if p else None):>7}  "
                     f"{_pts(p.excess_accuracy_gap if p else None):>7}  {ci:>22}  {_pts(t.excess_accuracy_gap if t else None):>7}")
    lines.append("-" * len(header))
    lines.append(f"{'overall':<18}{dense.overall.n:>6}  {_pct(dense.overall.accuracy):>7}  "
                 f"{_pct(pruned.overall.accuracy if pruned else None):>7}  {'':>7}  "
                 f"{_pct(tuned.overall.accuracy if tuned else None):>22}")
    for label, report in (("pruned", pruned), ("fine-tuned", tuned)):
        if report is not None and report.summary.max_excess_accuracy_gap is not None:
            s = report.summary
            lines.append(f"{label}: max ψ_g {_pts(s.max_excess_accuracy_gap)} ({s.max_excess_accuracy_gap_group}), "
                         f"worst group {s.worst_group} {_pct(s.worst_group_accuracy)}, "
                         f"tolerance {_pts(s.tolerance)} met: {s.tolerance_met} "
                         f"(with 95% confidence: {s.tolerance_met_with_confidence})")
    if result.pruning is not None:
        lines.append(f"measured sparsity of prunable weights: {result.pruning.sparsity.prunable_sparsity:.3f}")
    lines.extend(f"note: {n}" for n in result.notes)
    return "\n".join(lines)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pts(x) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def _json_object(text: str, field: str) -> dict:
    from .errors import InvalidConfigError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidConfigError(field, f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise InvalidConfigError(field, "must be a JSON object")
    return value


def _progress_printer():
    """Print pipeline phases, and one line per finished epoch (not per step: logs stay short)."""

    def show(phase: str, payload: dict) -> None:
        if phase in ("finetune_step", "gradual_prune_step", "train_step"):
            if payload["step"] % payload["steps_per_epoch"] == 0:
                multipliers = payload.get("multipliers") or {}
                lam = ", ".join(f"{k} {v:.3f}" for k, v in multipliers.items() if v)
                print(f"  epoch {payload['epoch'] + 1}/{payload['epochs']}: last batch loss {payload['loss']:.3f}"
                      + (f"; multipliers {lam}" if lam else ""), flush=True)
        else:
            print(f"{phase} {payload or ''}".rstrip(), flush=True)

    return show


if __name__ == "__main__":
    sys.exit(main())
