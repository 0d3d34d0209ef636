"""Error parsing and the retry policy, without a server."""

from __future__ import annotations

import grpc
import pytest

from equiprune.client.errors import EquipruneError, parse_field
from equiprune.client.retry import RETRY_READS, RetryPolicy, call_with_retry


class _Failure(grpc.RpcError):
    def __init__(self, code, details="boom"):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize("message, field", [
    ("sha256: must be 64 hex digits", "sha256"),
    ("spec.data.group_by: unknown attribute 'x'", "spec.data.group_by"),
    ("spec.data.group_by[1]: empty", "spec.data.group_by[1]"),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: refused", None),
    ("internal error (incident 3f2a; the server log has the details)", None),
    ("no field here", None),
])
def test_field_is_parsed_from_the_message(message, field):
    assert parse_field(message) == field


def test_error_from_rpc_error_keeps_code_message_field_and_problem():
    error = EquipruneError.from_rpc_error(_Failure(grpc.StatusCode.NOT_FOUND, "job_id: no job 'job-1'"))
    assert error.code == grpc.StatusCode.NOT_FOUND and error.field == "job_id"
    assert error.problem == "no job 'job-1'" and str(error) == "NOT_FOUND: job_id: no job 'job-1'"


def test_retries_then_gives_up_with_the_last_error():
    calls, delays = [], []

    def call():
        calls.append(1)
        raise _Failure(grpc.StatusCode.UNAVAILABLE, "down")

    with pytest.raises(EquipruneError) as caught:
        call_with_retry(call, RetryPolicy(retries=3, backoff=0.1, max_backoff=0.25), sleep=delays.append)
    assert len(calls) == 4 and caught.value.code == grpc.StatusCode.UNAVAILABLE
    # Exponential with jitter in [ceiling/2, ceiling], capped at max_backoff.
    for delay, ceiling in zip(delays, [0.1, 0.2, 0.25]):
        assert ceiling / 2 <= delay <= ceiling


def test_only_retryable_codes_are_retried():
    calls = []

    def call():
        calls.append(1)
        raise _Failure(grpc.StatusCode.DEADLINE_EXCEEDED)

    with pytest.raises(EquipruneError):
        call_with_retry(call, RetryPolicy(retries=3), sleep=lambda s: None)
    assert len(calls) == 1
    with pytest.raises(EquipruneError):
        call_with_retry(call, RetryPolicy(retries=3), retry_codes=RETRY_READS, sleep=lambda s: None)
    assert len(calls) == 1 + 4


def test_success_after_a_failure_returns_the_value():
    outcomes = iter([_Failure(grpc.StatusCode.UNAVAILABLE), "ok"])

    def call():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert call_with_retry(call, RetryPolicy(retries=1), sleep=lambda s: None) == "ok"


def test_policy_refuses_negative_retries():
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)
