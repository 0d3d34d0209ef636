"""Retries with exponential backoff and jitter, for unary calls and for resumed streams.

What is retried (the SDK's policy):

* UNAVAILABLE, on every call. The server is unreachable or restarting; the calls are safe to
  repeat: reads trivially, CreateJob because the SDK always sends a request_id,
  PutUploadChunk because a chunk committed in full is accepted again unchanged, CancelJob
  because cancelling twice changes nothing, DeployModel because it replaces, ReportOutcomes
  because the server counts a repeated outcome as a duplicate. Two are not idempotent:
  Predict and RecordEvaluations. UNAVAILABLE normally means the request reached no replica,
  but when it did, the repeat is recorded twice (serving.py says more).
* DEADLINE_EXCEEDED, on reads only (Get*, List*, GetUpload, WaitJob). A write that timed out
  may still be running on the server; repeating it blindly could double its effect, so the
  caller decides.

Everything else is surfaced at once as an EquipruneError. Streams (downloads, job watches) do
not restart from scratch: they resume from the last offset or sequence seen, and give up
after `retries` consecutive failures that made no progress.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

import grpc

from .errors import EquipruneError, SpecError

T = TypeVar("T")

RETRY_ALWAYS = frozenset({grpc.StatusCode.UNAVAILABLE})
RETRY_READS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    retries: extra attempts after the first (0: never retry). backoff: the first delay in
    seconds, doubled after every failure up to max_backoff. Each delay is drawn from
    [delay/2, delay] so that many clients do not retry in lockstep.
    """

    retries: int = 5
    backoff: float = 0.2
    max_backoff: float = 5.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise SpecError("retries", f"must be ≥ 0, got {self.retries}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise SpecError("backoff", "delays must be ≥ 0")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (1-based)."""
        ceiling = min(self.max_backoff, self.backoff * (2 ** max(failures - 1, 0)))
        return (rng or random).uniform(ceiling / 2, ceiling)


def call_with_retry(call: Callable[[], T], policy: RetryPolicy, *,
                    retry_codes: Iterable[grpc.StatusCode] = RETRY_ALWAYS,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, repeated on a retryable status; failures become EquipruneError."""
    retry_codes = frozenset(retry_codes)
    failures = 0
    while True:
        try:
            return call()
        except grpc.RpcError as error:
            failures += 1
            code = error.code() if callable(getattr(error, "code", None)) else None
            if code not in retry_codes or failures > policy.retries:
                raise EquipruneError.from_rpc_error(error) from None
            sleep(policy.delay(failures))


class ResumeBudget:
    """Counts consecutive failures of a resumable transfer; progress resets the count.

    A stream that keeps moving forward between interruptions is resumed indefinitely; one that
    fails `policy.retries` + 1 times in a row without a single new byte or event gives up.
    """

    def __init__(self, policy: RetryPolicy, retry_codes: Iterable[grpc.StatusCode] = RETRY_ALWAYS,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._policy = policy
        self._retry_codes = frozenset(retry_codes)
        self._sleep = sleep
        self._failures = 0

    def progressed(self) -> None:
        self._failures = 0

    def failed(self, error: grpc.RpcError) -> None:
        """Wait before resuming, or raise the EquipruneError when the error is final."""
        self._failures += 1
        code = error.code() if callable(getattr(error, "code", None)) else None
        if code not in self._retry_codes or self._failures > self._policy.retries:
            raise EquipruneError.from_rpc_error(error) from None
        self._sleep(self._policy.delay(self._failures))
