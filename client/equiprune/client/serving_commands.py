"""The serving commands of `equiprune`: deploy, undeploy, models, predict, outcomes, evaluations,
metrics, and traffic (sample instances from a dataset, written locally: traffic.py).

    equiprune deploy digits --model art-1f2e --group-by cohort --reference-job job-3c9d
    equiprune deploy digits --model art-1f2e --shadow art-0a0b --group-by cohort \\
        --reference majority=0.95 --reference minority=0.91 --reference-overall 0.94 --input-shape 1,8,8
    equiprune traffic --dataset sample:digits --out requests.jsonl --group-by cohort
    equiprune predict digits --instances requests.jsonl --out predictions.jsonl
    equiprune outcomes --from predictions.jsonl
    equiprune metrics digits --window 1h

Files are JSON Lines, one object per line (blank lines are skipped):

* predict --instances: {"values": [...floats...], "groups": {"cohort": "minority"}, "label": 3}
  (label optional). Each prediction is written as {"prediction_id", "predicted_class",
  "probabilities", "shadow_class" (with a shadow), "label" (when the input line had one)}, so
  the output file is what `outcomes --from` reads once the labels are known.
* outcomes --from: lines with prediction_id and label; lines without a label are skipped.
* evaluations --from: {"label", "predicted_class", "groups", "confidence"?, "time"?}.

A malformed line is refused as `error: FILE:LINE: field: problem` (exit 2). outcomes and
evaluations check the whole file before sending anything; predict writes each batch's
predictions as they come, so after a failure the output holds every prediction the server made.
"""

from __future__ import annotations

import json
import os
import time
from typing import Iterator

from equiprune.text.tolerance import tolerance_argument, tolerance_help

from . import tables, traffic
from .runner import EXIT_OK, Output, to_dict
from .sdk import EquipruneClient
from .serving import (DEFAULT_ITEMS_PER_CALL, MAX_INSTANCES_PER_CALL, MAX_ITEMS_PER_CALL, batches,
                      to_evaluation_record, to_instance, to_outcome)
from .specs import SpecError

DEFAULT_PREDICT_BATCH = 256
# Probabilities are float32 on the wire: 7 significant digits keep all they hold, and no noise.
_PROBABILITY_DIGITS = 7


def add_commands(command) -> None:
    """Register the serving commands with cli.build_parser's `command(name, handler, help)`."""
    deploy = command("deploy", _deploy, "serve a model artifact under a name, monitored per group")
    deploy.add_argument("name", help="served name: 1-63 of a-z, 0-9 and -, starting with a letter")
    deploy.add_argument("--model", required=True, help="model artifact id (art-…)")
    deploy.add_argument("--shadow", default="", metavar="ART", help="dense reference served beside it (shadow mode)")
    deploy.add_argument("--group-by", action="append", required=True, default=[],
                        help="group attribute to monitor by (repeatable: intersectional groups)")
    reference = deploy.add_mutually_exclusive_group()
    reference.add_argument("--reference-job", default="", metavar="JOB",
                           help="a job whose dense per-group report is the reference")
    reference.add_argument("--reference", action="append", default=[], metavar="GROUP=ACC",
                           help="reference accuracy of a group, e.g. minority=0.91 or minority=91%% (repeatable)")
    deploy.add_argument("--reference-overall", metavar="ACC", help="reference overall accuracy, with --reference")
    deploy.add_argument("--tolerance", type=tolerance_argument, help=tolerance_help(None))
    deploy.add_argument("--input-shape", metavar="1,8,8",
                        help="shape of one instance (default: the reference job's dataset)")
    undeploy = command("undeploy", _undeploy, "stop serving a model (its monitor history stays)")
    undeploy.add_argument("name")
    command("models", _models, "list served models")
    traffic.add_command(command)
    predict = command("predict", _predict, "classify the instances of a JSON Lines file with a served model")
    predict.add_argument("name", help="served name")
    predict.add_argument("--instances", required=True, metavar="FILE.jsonl",
                         help='one {"values": [...], "groups": {...}, "label": 3 (optional)} per line')
    predict.add_argument("--out", metavar="FILE.jsonl", help="write the predictions here (default: stdout)")
    predict.add_argument("--batch", type=int, default=DEFAULT_PREDICT_BATCH,
                         help=f"instances per call, at most {MAX_INSTANCES_PER_CALL} "
                              f"(default: {DEFAULT_PREDICT_BATCH})")
    outcomes = command("outcomes", _outcomes, "report the true labels of earlier predictions")
    outcomes.add_argument("--from", dest="source", required=True, metavar="FILE.jsonl",
                          help="predictions file with labels (predict --out of instances that had them)")
    outcomes.add_argument("--batch", type=int, default=DEFAULT_ITEMS_PER_CALL,
                          help=f"outcomes per call, at most {MAX_ITEMS_PER_CALL} (default: {DEFAULT_ITEMS_PER_CALL})")
    evaluations = command("evaluations", _evaluations, "add labelled evaluation records to a served model's monitor")
    evaluations.add_argument("name", help="served name")
    evaluations.add_argument("--from", dest="source", required=True, metavar="FILE.jsonl",
                             help='one {"label", "predicted_class", "groups", "confidence"?, "time"?} per line')
    evaluations.add_argument("--batch", type=int, default=DEFAULT_ITEMS_PER_CALL,
                             help=f"records per call, at most {MAX_ITEMS_PER_CALL} (default: {DEFAULT_ITEMS_PER_CALL})")
    metrics = command("metrics", _metrics, "a served model's per-group monitor over its windows")
    metrics.add_argument("name", help="served name (also after undeploy)")
    metrics.add_argument("--window", help="only this window, e.g. 5m, 1h or 1d")


# ------------------------------------------------------------------ deployments

def _deploy(client: EquipruneClient, args, out: Output) -> int:
    model = client.deploy_model(
        args.name, args.model, args.group_by, shadow_artifact_id=args.shadow, reference_job_id=args.reference_job,
        reference_accuracy=parse_references(args.reference) or None,
        reference_overall_accuracy=(parse_fraction(args.reference_overall, "reference_overall")
                                    if args.reference_overall is not None else None),
        tolerance=args.tolerance, input_shape=parse_shape(args.input_shape) if args.input_shape else None)
    out.say(f"deployed {tables.served_model_line(model)}")
    out.document(to_dict(model))
    return EXIT_OK


def _undeploy(client: EquipruneClient, args, out: Output) -> int:
    client.undeploy_model(args.name)
    out.say(f"undeployed {args.name}; its monitor history stays: `equiprune metrics {args.name}`")
    out.document({"undeployed": args.name})
    return EXIT_OK


def _models(client: EquipruneClient, args, out: Output) -> int:
    models = client.list_served_models()
    out.say(tables.served_models_table(models))
    out.document({"models": [to_dict(m) for m in models]})
    return EXIT_OK


def parse_references(items: list[str]) -> dict[str, float]:
    """`GROUP=ACC` flags as {group: accuracy}; ACC is a fraction (0.91) or a percentage (91%)."""
    references = {}
    for item in items:
        group, sep, accuracy = item.rpartition("=")
        if not sep or not group:
            raise SpecError("reference", f"expected GROUP=ACC (e.g. minority=0.91), got {item!r}")
        if group in references:
            raise SpecError("reference", f"group {group!r} given twice")
        references[group] = parse_fraction(accuracy, f"reference[{group}]")
    return references


def parse_fraction(text: str, field: str) -> float:
    """0.91 or 91% as 0.91, refused outside [0, 1]."""
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise SpecError(field, f"expected an accuracy such as 0.91 or 91%, got {text!r}") from None
    if not 0 <= value <= 1:
        raise SpecError(field, f"must be in [0, 1] (or 0% to 100%), got {text!r}")
    return value


def parse_shape(text: str) -> list[int]:
    """`1,8,8` (or 1x8x8) as [1, 8, 8]."""
    parts = text.replace("x", ",").replace("×", ",").split(",")
    if not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise SpecError("input_shape", f"expected dimensions ≥ 1 such as 1,8,8, got {text!r}")
    return [int(p) for p in parts]


# ------------------------------------------------------------------ traffic

def _predict(client: EquipruneClient, args, out: Output) -> int:
    _check_batch(args.batch, MAX_INSTANCES_PER_CALL)
    lines = read_jsonl(args.instances, "instances")
    collected: list[dict] | None = [] if out.json and not args.out else None
    sink = open(args.out, "w", encoding="utf-8") if args.out else (None if out.json else out.stdout)
    count, started = 0, time.perf_counter()
    try:
        for chunk in batches(lines, args.batch):
            instances = [to_instance(record, f"{args.instances}:{number}: ") for number, record in chunk]
            predictions = client.predict(args.name, instances, batch_size=args.batch)
            for (_, record), prediction in zip(chunk, predictions):
                line = prediction_line(prediction, record)
                if collected is not None:
                    collected.append(line)
                else:
                    sink.write(json.dumps(line) + "\n")
            count += len(predictions)
    except BaseException:
        if count and args.out:
            out.warn(f"{count} predictions were made and written to {args.out} before the error")
        raise
    finally:
        if args.out:
            sink.close()
        elif sink is not None:
            sink.flush()
    seconds = time.perf_counter() - started
    rate = count / seconds if seconds > 0 else 0.0
    if not out.json:
        out.warn(f"{count} predictions with {args.name} in {seconds:.2f} s ({rate:.0f} predictions/s)"
                 + (f" → {args.out}" if args.out else ""))
    document = {"model": args.name, "count": count, "seconds": round(seconds, 6),
                "predictions_per_second": round(rate, 3), "out": args.out}
    if collected is not None:
        document["predictions"] = collected
    out.document(document)
    return EXIT_OK


def prediction_line(prediction, record: dict) -> dict:
    """One output line: the prediction, and the input's label when it had one."""
    line = {"prediction_id": prediction.prediction_id, "predicted_class": prediction.predicted_class,
            "probabilities": [float(f"{p:.{_PROBABILITY_DIGITS}g}") for p in prediction.probabilities]}
    if prediction.HasField("shadow_class"):
        line["shadow_class"] = prediction.shadow_class
    if record.get("label") is not None:
        line["label"] = record["label"]
    return line


def _outcomes(client: EquipruneClient, args, out: Output) -> int:
    _check_batch(args.batch, MAX_ITEMS_PER_CALL)

    def labelled() -> Iterator:
        for number, record in read_jsonl(args.source, "from"):
            if record.get("label") is not None:
                yield to_outcome(record, f"{args.source}:{number}: ")

    sent = skipped = 0
    for number, record in read_jsonl(args.source, "from"):  # the whole file is checked before anything is sent
        if record.get("label") is None:
            skipped += 1
        else:
            to_outcome(record, f"{args.source}:{number}: ")
            sent += 1
    counts = client.report_outcomes(labelled(), batch_size=args.batch)
    out.say(f"{sent} outcomes: {tables.counts_line(counts)}"
            + (f" ({skipped} lines without a label skipped)" if skipped else ""))
    out.document({**counts, "sent": sent, "skipped_without_label": skipped})
    return EXIT_OK


def _evaluations(client: EquipruneClient, args, out: Output) -> int:
    _check_batch(args.batch, MAX_ITEMS_PER_CALL)

    def records() -> Iterator:
        for number, record in read_jsonl(args.source, "from"):
            yield to_evaluation_record(record, f"{args.source}:{number}: ")

    sent = sum(1 for _ in records())  # the whole file is checked before anything is sent
    counts = client.record_evaluations(args.name, records(), batch_size=args.batch)
    out.say(f"{sent} evaluation records: {tables.counts_line(counts)}")
    out.document({**counts, "sent": sent})
    return EXIT_OK


# ------------------------------------------------------------------ monitor

def _metrics(client: EquipruneClient, args, out: Output) -> int:
    metrics = client.get_model_metrics(args.name)
    windows = list(metrics.windows)
    if args.window:
        seconds = tables.window_seconds(args.window)
        windows = [w for w in windows if w.window_seconds == seconds]
        if not windows:
            kept = ", ".join(tables.window_name(w.window_seconds) for w in metrics.windows) or "none"
            raise SpecError("window", f"the monitor keeps no {tables.window_name(seconds)} window (it keeps: {kept})")
    out.say(tables.metrics_report(metrics, args.name, windows))
    document = to_dict(metrics)
    document["windows"] = [to_dict(w) for w in windows]
    out.document(document)
    return EXIT_OK


# ------------------------------------------------------------------ files

def read_jsonl(path: str, flag: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON Lines file, read lazily; a
    missing file is refused at once (before an output file is created, say)."""
    if not os.path.isfile(path):
        raise SpecError(flag, f"no file {path}")
    return _jsonl_lines(path)


def _jsonl_lines(path: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise SpecError(f"{path}:{number}", f"not JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise SpecError(f"{path}:{number}", "must be a JSON object")
            yield number, record


def _check_batch(size: int, most: int) -> None:
    if not 1 <= size <= most:
        raise SpecError("batch", f"must be in [1, {most}], got {size}")
