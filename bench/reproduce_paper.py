"""Reproduce "pruning has a disparate impact" on UTKFace and compare the repairs.

For each set-up (target race / groups race, the paper's; target gender / groups race):
train one dense model, prune it at every sparsity of a grid (layer-wise magnitude, first conv
and last linear dense, BatchNorm recalibrated), then fine-tune with naive / Equalized Loss /
CEAG / held-out CEAG / fair distillation over several seeds, and record per-group reports on
train and test.

Data use, the same for every method: a stratified 20 % of the training split is set aside as
the constraint split before the dense model is trained. The dense model and every
fine-tuning primal step see only the remaining 80 % ("train" below); only the held-out
variant's dual step reads the constraint split. Test data is never touched before the final
measurement.

Also: per-group diagnostics at the dense model and the Spearman rank correlation between
the second-order predicted R(a) and the measured R(a) of the just-pruned model.

    python bench/reproduce_paper.py --quick            # 2.3 min on 2 idle cores: docs/bench/quick-paper.md
    python bench/reproduce_paper.py --out docs/results/paper   # the documented run

Writes results.json, summary.md, PNG plots and the dense-model cache into --out (default
bench/out/paper, with --quick bench/out/paper-quick), and says so on its first and last lines.
Progress goes to stdout, one line per step with the seconds since the start; a step that runs
longer than 30 s says so every 30 s. Set-ups run in parallel, one process each (at most one per
core, each with cores/processes torch threads); --jobs 1 runs them one after the other.

--quick: 3,000 training / 1,500 test faces, sparsities 0.5 and 0.9, 1 seed, 6 dense epochs,
1 fine-tuning epoch, diagnostics on 200 faces per group with 4 probes and at most 5 power
iterations, without the "overall" pseudo-group (the predicted R(a) and every table are computed
as in the full run; only the recorded curvature estimates are coarser).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # harness/data.py (the UTKFace loader), _paper_report

from _paper_report import METHODS, merge_results, plot, summarise  # noqa: E402
from equiprune.engine.diagnostics import DiagnosticsConfig, diagnose  # noqa: E402
from equiprune.engine.evaluation import evaluate  # noqa: E402
from equiprune.engine.finetune.config import FinetuneConfig  # noqa: E402
from equiprune.engine.finetune.loop import finetune  # noqa: E402
from equiprune.engine.models.io import load_model, save_safetensors  # noqa: E402
from equiprune.engine.models.registry import ArchitectureSpec, build_model  # noqa: E402
from equiprune.engine.prune import PruningConfig, prune  # noqa: E402
from equiprune.engine.pruning.batchnorm import recalibrate_batchnorm  # noqa: E402
from equiprune.engine.ranking import rank_agreement  # noqa: E402
from equiprune.engine.report import build_report  # noqa: E402
from harness.data import load_utkface  # noqa: E402

SETUPS = {"race": ("race", ("race",)), "gender": ("gender", ("race",))}
HEARTBEAT_SECONDS = 30.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small subsample, 2 sparsities, 1 seed, lighter diagnostics")
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
    p.add_argument("--power-iterations", type=int, default=10,
                   help="most power iterations for each group's top Hessian eigenvalue")
    p.add_argument("--diag-overall", action=argparse.BooleanOptionalAction, default=True,
                   help="also diagnose all diagnostics faces as one group (costs as much again; no table reads it)")
    p.add_argument("--diag-per-group", type=int, default=400,
                   help="training faces per group the diagnostics read (a stratified random subset; 0 = all)")
    p.add_argument("--jobs", type=int, default=0,
                   help="processes, one set-up each (0 = one per set-up, at most one per core)")
    p.add_argument("--out", default=None,
                   help="output folder (default bench/out/paper; with --quick bench/out/paper-quick)")
    p.add_argument("--from-results", default=None,
                   help="re-render plots and summary.md from results.json files (comma-separated: their set-ups are merged)")
    args = p.parse_args(argv)
    if args.quick:
        args.sparsities, args.seeds = "0.5,0.9", 1
        args.dense_epochs, args.ft_epochs = 6, 1
        args.max_train, args.max_test = args.max_train or 3000, args.max_test or 1500
        args.probes = min(args.probes, 4)
        args.power_iterations = min(args.power_iterations, 5)
        args.diag_overall = False
        args.diag_per_group = min(args.diag_per_group, 200)
    if args.out is None:
        args.out = str(ROOT / "bench" / "out" / ("paper-quick" if args.quick else "paper"))
    return args


class Progress:
    """Progress lines on stdout: seconds since the run started, the set-up, the message.
    Flushed line by line: set-ups running in parallel processes share the stream."""

    def __init__(self, started: float, label: str = "") -> None:
        self.started, self.label = started, label

    def __call__(self, message: str) -> None:
        label = f"[{self.label}] " if self.label else ""
        print(f"{time.monotonic() - self.started:5.0f}s {label}{message}", flush=True)

    @contextmanager
    def step(self, what: str, announce: bool = False):
        """Time a step: a line every HEARTBEAT_SECONDS while it runs (and one at its start when
        `announce`), then `what: Ns` plus whatever the block put in the yielded dict's "note"."""
        if announce:
            self(f"{what} ...")
        t0, stop, done = time.monotonic(), threading.Event(), {"note": ""}

        def beat():
            while not stop.wait(HEARTBEAT_SECONDS):
                self(f"{what}: still running ({time.monotonic() - t0:.0f}s)")

        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        try:
            yield done
        finally:
            stop.set()
            beater.join()
        self(f"{what}: {time.monotonic() - t0:.0f}s" + (f"; {done['note']}" if done["note"] else ""))

    def epochs(self, what: str):
        """finetune's on_progress: one line per finished epoch (mean batch loss, seconds)."""
        state = {"t0": time.monotonic(), "loss": 0.0, "steps": 0}

        def on_progress(event) -> None:
            state["loss"] += event.loss
            state["steps"] += 1
            if event.step % event.steps_per_epoch == 0:
                self(f"{what}: epoch {event.epoch + 1}/{event.epochs}, mean batch loss "
                     f"{state['loss'] / state['steps']:.3f} ({time.monotonic() - state['t0']:.0f}s)")
                state.update(t0=time.monotonic(), loss=0.0, steps=0)
        return on_progress


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        return render(merge_results([json.loads(Path(p).read_text()) for p in args.from_results.split(",")]), out)
    started = time.monotonic()
    setups = args.setups.split(",")
    unknown = sorted(set(setups) - set(SETUPS))
    if unknown:
        raise SystemExit(f"unknown set-ups {unknown}; choose from {sorted(SETUPS)}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = max(1, min(len(setups), args.jobs or cores))
    threads = max(1, cores // jobs) if jobs > 1 else torch.get_num_threads()
    _announce(args, setups, out, jobs, threads)
    results = {"args": vars(args), "setups": {}}
    tasks = [(args, setup, started) for setup in setups]
    if jobs > 1:
        with multiprocessing.get_context("spawn").Pool(jobs, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
            records = pool.imap(_run_named_setup, tasks)  # in order: results.json keeps the set-ups' order
            for setup, record in zip(setups, records):
                results["setups"][setup] = record
                (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    else:
        for task in tasks:
            results["setups"][task[1]] = _run_named_setup(task)
            (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    return render(results, out, started)


def _announce(args, setups, out: Path, jobs: int, threads: int) -> None:
    what = "; ".join(f"target {SETUPS[s][0]} / groups {'&'.join(SETUPS[s][1])}" for s in setups)
    diag = (f"diagnostics on {args.diag_per_group or 'all'} faces per group, {args.probes} probes, "
            f"≤ {args.power_iterations} power iterations{', plus overall' if args.diag_overall else ''}")
    print(f"Paper reproduction{' --quick' if args.quick else ''}: set-ups {what}; sparsities {args.sparsities}; "
          f"methods {args.methods}; {_n(args.seeds, 'seed')}; dense {_n(args.dense_epochs, 'epoch')}, fine-tuning "
          f"{_n(args.ft_epochs, 'epoch')}; faces train {args.max_train or 'all'}, test {args.max_test or 'all'}; {diag}.",
          flush=True)
    print(f"Writing into {out}/ (results.json, summary.md, PNG plots, dense-model cache); "
          f"{_n(jobs, 'process', 'processes')}, {_n(threads, 'torch thread')} each.", flush=True)


def _n(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _run_named_setup(task) -> dict:
    args, setup, started = task
    target, group_by = SETUPS[setup]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    return run_setup(args, target, group_by, sparsities, args.methods.split(","), Progress(started, setup))


def render(results: dict, out: Path, started: float | None = None) -> dict:
    plot(results, out)
    summary = summarise(results)
    (out / "summary.md").write_text(summary)
    print(summary)
    files = [out / "summary.md", *([out / "results.json"] if started is not None else []),  # --from-results writes none
             *[out / f"{s}_{kind}.png" for s in results["setups"] for kind in ("group_accuracy", "max_psi")]]
    took = f" in {time.monotonic() - started:.0f}s" if started is not None else ""
    print(f"Done{took}. Wrote:", *[f"  {f}" for f in files], sep="\n", flush=True)
    return results


def run_setup(args, target, group_by, sparsities, methods, log: Progress | None = None) -> dict:
    log = log or Progress(time.monotonic(), target)
    started = time.perf_counter()
    data = load_utkface(target=target, max_train=args.max_train, max_test=args.max_test, seed=0)
    full_train = data.select(group_by, split="train")
    test = data.select(group_by, split="test")
    train, constraint = full_train.split_off(0.2, seed=0)
    log(f"faces: train {len(train)}, constraint {len(constraint)}, test {len(test)}")

    kwargs = {"num_classes": data.num_classes, "in_channels": 3, "input_size": 32, **json.loads(args.arch_kwargs)}
    spec = ArchitectureSpec(args.arch, kwargs)
    dense, dense_seconds = dense_model(spec, train, args, Path(args.out) / f"dense-{target}.safetensors", log)
    with log.step("dense model evaluated on train, test and constraint faces") as step:
        dense_ev = {"train": evaluate(dense, train, keep_logits=True), "test": evaluate(dense, test),
                    "constraint": evaluate(dense, constraint)}
        step["note"] = f"train acc {dense_ev['train'].accuracy():.3f}, test acc {dense_ev['test'].accuracy():.3f}"
    record = {
        "target": target, "group_by": list(group_by), "sizes": {"train": len(train), "constraint": len(constraint), "test": len(test)},
        "group_names": list(train.group_names), "arch": spec.to_dict(), "dense_train_seconds": dense_seconds,
        "dense": {k: build_report(v).to_dict() for k, v in dense_ev.items() if k != "constraint"},
        "sparsities": {},
    }

    diag_data = train.sample_per_group(args.diag_per_group, seed=0) if args.diag_per_group > 0 else train
    config = DiagnosticsConfig(probes=args.probes, power_iterations=args.power_iterations, seed=0,
                               include_overall=args.diag_overall)
    with log.step(f"diagnostics at the dense model ({len(diag_data)} faces in {diag_data.num_groups} groups, "
                  f"{args.probes} probes, ≤ {args.power_iterations} power iterations)", announce=True):
        diagnostics = diagnose(dense, diag_data, config)
    record["diagnostics"] = diagnostics.to_dict()
    predicted_all, measured_all = {}, {}

    for sparsity in sparsities:
        with log.step(f"s={sparsity}: pruned, BatchNorm recalibrated, R(a) predicted, evaluated") as step:
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
            step["note"] = (f"pruned test max psi {_fmt(pruned_reports['test'].summary.max_excess_accuracy_gap)}"
                            f" (before BN recalibration {_fmt(raw_reports['test'].summary.max_excess_accuracy_gap)}),"
                            f" spearman(pred, measured R) {_fmt(entry['prediction']['rank_agreement']['spearman'])}")
        for method in methods:
            runs = []
            for seed in range(args.seeds):
                with log.step(f"s={sparsity} {method} seed {seed}: fine-tuned {_n(args.ft_epochs, 'epoch')}, evaluated") as step:
                    model = copy.deepcopy(pruned)
                    config = FinetuneConfig(method=method, epochs=args.ft_epochs, seed=seed, tolerance=args.tolerance,
                                            dual_lr=args.dual_lr, lr_schedule=args.ft_schedule)
                    t0 = time.perf_counter()
                    result = finetune(model, outcome.masks, train, config, train_reference=dense_ev["train"],
                                      constraint=constraint, constraint_reference=dense_ev["constraint"], teacher=dense,
                                      on_progress=log.epochs(f"s={sparsity} {method} seed {seed}") if args.ft_epochs > 1 else None)
                    seconds = time.perf_counter() - t0
                    reports = {k: build_report(evaluate(model, d), dense_ev[k], tolerance=args.tolerance)
                               for k, d in (("train", train), ("test", test))}
                    runs.append({"seed": seed, "seconds": seconds, "final_multipliers": result.epochs[-1].multipliers,
                                 **{k: v.to_dict() for k, v in reports.items()}})
                    step["note"] = (f"train max psi {_fmt(reports['train'].summary.max_excess_accuracy_gap)}, "
                                    f"test max psi {_fmt(reports['test'].summary.max_excess_accuracy_gap)}, "
                                    f"test acc {reports['test'].overall.accuracy:.3f} (fine-tuning {seconds:.0f}s)")
            entry["methods"][method] = runs
        record["sparsities"][str(sparsity)] = entry
    record["prediction_pooled"] = rank_agreement(predicted_all, measured_all).to_dict()
    record["seconds"] = time.perf_counter() - started
    log(f"set-up done in {record['seconds']:.0f}s")
    return record


def dense_model(spec, train, args, cache: Path, log: Progress):
    """Train the dense model, or load it from `cache` when an earlier run with the same
    architecture, data size and epochs saved it (the training is deterministic)."""
    key = json.dumps({"spec": spec.to_dict(), "n": len(train), "epochs": args.dense_epochs})
    if cache.exists():
        loaded = load_model(cache)
        if loaded.spec == spec and cache.with_suffix(".key").read_text() == key:
            log(f"dense model loaded from {cache.resolve()} (cached by an earlier run)")
            return loaded.module, 0.0
    log(f"training the dense model: {args.dense_epochs} epochs on {len(train)} faces")
    torch.manual_seed(0)
    dense = build_model(spec)
    config = FinetuneConfig(method="naive", epochs=args.dense_epochs, lr=0.05, lr_schedule="cosine", augment_hflip=True, seed=0)
    started = time.perf_counter()
    finetune(dense, {}, train, config, on_progress=log.epochs("dense training"))
    seconds = time.perf_counter() - started
    save_safetensors(dense, spec, cache)
    cache.with_suffix(".key").write_text(key)
    log(f"dense model trained in {seconds:.0f}s, cached in {cache.resolve()}")
    return dense, seconds


def _fmt(x):
    return "n/a" if x is None else f"{x:+.3f}"


if __name__ == "__main__":
    main()
