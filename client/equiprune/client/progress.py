"""Progress on stderr, hand-written so the client needs no extra dependency.

On a terminal one line per phase is redrawn in place with `\\r` (a bar, step/total, epoch,
loss); anywhere else (a log file, CI) a line is printed per phase and per epoch, so logs stay
short and readable.
"""

from __future__ import annotations

import sys
from typing import TextIO

from equiprune.v1 import jobs_pb2

from .specs import JOB_STATES
from .tables import size

BAR_WIDTH = 24
# Phases without epochs but with a handful of steps (budget probes) print every step.
_FEW_STEPS = 50


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def bar(done: float, total: float, width: int = BAR_WIDTH) -> str:
    filled = 0 if total <= 0 else min(width, int(width * done / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class _Line:
    """One line redrawn in place on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._drawn = 0

    def draw(self, text: str) -> None:
        self._stream.write("\r" + text + " " * max(0, self._drawn - len(text)))
        self._stream.flush()
        self._drawn = len(text)

    def finish(self) -> None:
        """Keep what is drawn and move to a fresh line."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = 0


class JobProgress:
    """Shows a job's events as they arrive."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = _is_tty(self._stream) if tty is None else tty
        self._line = _Line(self._stream)
        self._state: int | None = None
        self._shown: tuple | None = None
        self._phase: str | None = None

    def update(self, event: jobs_pb2.JobEvent) -> None:
        progress = event.progress
        if event.state != self._state:
            self._state = event.state
            if event.state == jobs_pb2.JOB_STATE_QUEUED:
                self._print("queued")
        if progress.phase in ("", "queued", "done"):
            return  # the state line says it
        if self._tty:
            if progress.phase != self._phase:
                self._line.finish()
            self._line.draw(describe(progress))
        elif self._worth_a_line(progress):
            self._print(describe(progress))
        self._phase = progress.phase

    def interrupt(self) -> None:
        """End the line being redrawn, so that other output can follow."""
        self._line.finish()

    def close(self) -> None:
        self._line.finish()

    def _worth_a_line(self, progress: jobs_pb2.Progress) -> bool:
        key = (progress.phase, progress.epoch, progress.message)
        if not progress.epochs and 0 < progress.total_steps <= _FEW_STEPS:
            key += (progress.step,)
        if key == self._shown:
            return False
        self._shown = key
        return True

    def _print(self, text: str) -> None:
        self._line.finish()
        self._stream.write(text + "\n")
        self._stream.flush()


def describe(progress: jobs_pb2.Progress) -> str:
    """`finetune [#####---] 40/80  epoch 2/5  loss 0.312  sparsity 0.900  pruned`."""
    parts = [f"{progress.phase:<14}"]
    if progress.total_steps:
        parts.append(f"{bar(progress.step, progress.total_steps)} {progress.step}/{progress.total_steps}")
    if progress.epochs:
        parts.append(f"epoch {progress.epoch + 1}/{progress.epochs}")
    for name in sorted(progress.metrics, key=lambda n: (n != "loss", n))[:3]:
        parts.append(f"{name} {progress.metrics[name]:.4g}")
    if any(progress.group_multipliers.values()):
        top = max(progress.group_multipliers.items(), key=lambda item: item[1])
        parts.append(f"max λ_g {top[1]:.3g} ({top[0]})")
    if progress.message:
        parts.append(progress.message)
    return "  ".join(parts).rstrip()


class ByteProgress:
    """Bytes moved by an upload or download: redrawn on a terminal, one line at the end elsewhere."""

    def __init__(self, label: str, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._tty = _is_tty(self._stream) if tty is None else tty
        self._line = _Line(self._stream)
        self._total = 0
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        self._done, self._total = done, total
        if self._tty:
            self._line.draw(f"{self._label} {bar(done, total)} {_mib(done)}/{_mib(total)} MiB")

    def close(self) -> None:
        if self._tty:
            self._line.finish()
        elif self._total:
            self._stream.write(f"{self._label}: {size(self._done)}\n")
            self._stream.flush()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def state_name(state: int) -> str:
    return JOB_STATES.name(state)
