"""The pipeline's (phase, payload) calls and the training loop's step events, as `JobEvent`s."""

from __future__ import annotations

from collections.abc import Callable

from ..pipeline import CompressionJob
from .outcome import JobEvent, OnEvent, StageReport


def step_event(phase: str, event: dict) -> JobEvent:
    """One training step (a `finetune.loop.StepEvent`'s fields)."""
    return JobEvent(phase, step=event["step"], total_steps=event["steps_per_epoch"] * event["epochs"],
                    epoch=event["epoch"], epochs=event["epochs"], metrics={"loss": event["loss"]},
                    group_multipliers=dict(event.get("multipliers") or {}))


def pipeline_events(emit: OnEvent, job: CompressionJob, *, report_stages: bool = True) -> Callable[[str, dict], None]:
    """A `run_compression` progress callback that emits JobEvents. Each stage's report goes out
    as soon as it exists, so a watcher sees the damage before the repair."""
    splits = {"train": job.train_split or "", "eval": job.eval_split or ""}

    def say(phase: str, payload: dict) -> None:
        if phase in ("finetune_step", "gradual_prune_step"):
            emit(step_event("finetune" if phase == "finetune_step" else "gradual_prune", payload))
        elif phase == "report":
            if report_stages:
                for key, report in (("train", payload["reports"].train), ("eval", payload["reports"].eval)):
                    if report is not None:
                        emit(JobEvent(payload["stage"], report=StageReport(payload["stage"], splits[key], report)))
        elif phase != "done":
            emit(JobEvent(phase, ", ".join(f"{k}={v}" for k, v in payload.items())))

    return say
