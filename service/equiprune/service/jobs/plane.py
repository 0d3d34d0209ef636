"""The job plane: create (validated once, here), read, wait for, watch and cancel jobs —
protocol-neutral (no gRPC; the job manager is reached through `manager`, any object whose
async methods are the manager's: a Serve handle adapter in the service, a fake in tests).

A spec is validated once, at create time: the engine's configs check every value as the
engine `JobSpec` is built (`wire.spec_from_proto`), and this plane checks it against the
stored artifacts' descriptions (kinds, group attributes, splits, shapes and classes). The
task trusts the stored, normalised spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable

from equiprune.engine.errors import EngineError
from equiprune.engine.jobs import JobSpec, check_splits

from equiprune.service.errors import InvalidArgument, ResourceExhausted, naming
from equiprune.service.jobs.records import _not_found as not_found
from equiprune.service.artifacts.validation import artifact_of_kind, check_job_fit, described_list

JOB_ID = re.compile(r"^job-[0-9a-f]{16}$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
DEFAULT_WAIT_S, MAX_WAIT_S = 60.0, 600.0
WATCH_POLL_S = 15.0


def job_id_in(value: str, field: str = "job_id") -> str:
    if not JOB_ID.match(value):
        raise InvalidArgument(f"{value!r} is not a job id (job- followed by 16 hex digits)", field=field)
    return value


class JobsPlane:
    def __init__(self, artifacts, manager, model_limits=None) -> None:
        self.artifacts = artifacts  # an ArtifactStore
        self.manager = manager
        self.model_limits = model_limits

    # Every method acts for a `caller` (tenants/auth.py): a job is its creator's tenant's, and
    # another tenant's job is NOT_FOUND in the same words as one that does not exist.

    def check(self, caller, spec: JobSpec) -> JobSpec:
        """Refuse a spec that does not fit its artifacts, all the caller's (blocking: reads the
        artifact store)."""
        dataset = artifact_of_kind(self.artifacts, spec.dataset, "dataset", "spec.dataset", caller.tenant)
        model = (artifact_of_kind(self.artifacts, spec.model, "model", "spec.model", caller.tenant)
                 if spec.model is not None else None)
        attributes = described_list(dataset.description, "attributes")
        for name in spec.data.group_by:
            if name not in attributes:
                raise InvalidArgument(f"the dataset has no attribute {name!r}; its attributes: {', '.join(attributes)}",
                                      field="spec.data.group_by")
        try:
            check_splits(spec, described_list(dataset.description, "splits"))
        except EngineError as err:
            raise InvalidArgument(err.problem, field=f"spec.{err.field}") from None
        check_job_fit(spec, model.description if model is not None else None, dataset.description, self.model_limits)
        # A job's outputs are stored whatever their size (it already ran): a tenant at its
        # storage quota starts no new job, or jobs would grow the store without bound.
        held = self.artifacts.held_bytes(caller.tenant)  # as uploads and imports count it
        if held >= caller.quotas.max_stored_bytes:
            raise ResourceExhausted(f"tenant {caller.tenant} holds {held} bytes (stored, announced by open uploads, "
                                    f"being imported), at its quota max_stored_bytes of "
                                    f"{caller.quotas.max_stored_bytes}; artifacts cannot be deleted yet, so ask an admin "
                                    "to raise it (UpdateTenantQuotas)", field="quotas.max_stored_bytes")
        return spec

    async def create(self, caller, spec: JobSpec | Callable[[], JobSpec], request_id: str = ""):
        """Record and launch a job. `spec` may be a function building it (from a request, which
        may import artifacts): it runs after the request id is checked, in a thread."""
        if request_id and not REQUEST_ID.match(request_id):
            raise InvalidArgument("at most 128 characters of A-Z a-z 0-9 . _ : -", field="request_id")
        spec = await asyncio.to_thread(lambda: self.check(caller, spec() if callable(spec) else spec))
        return await self.manager.create(spec.kind, spec.to_dict(), request_id or None, caller.tenant,
                                         caller.quotas.max_concurrent_jobs)

    async def get(self, caller, job_id: str, field: str = "job_id"):
        """The caller's job; refusals name `field` (a deploy's `reference_job_id` names a job too)."""
        with naming(field) if field != "job_id" else contextlib.nullcontext():
            record = await self.manager.get(job_id_in(job_id, field))
            if record.tenant != caller.tenant:
                raise not_found(job_id)  # the store's own words for a job that does not exist
            return record

    async def list(self, caller, states: tuple[str, ...], kind: str | None, page_size: int, page_token: str):
        from equiprune.service.artifacts.plane import page_size as checked

        return await self.manager.list(states, kind, checked(page_size, 50), page_token, caller.tenant)

    async def cancel(self, caller, job_id: str):
        await self.get(caller, job_id)
        return await self.manager.cancel(job_id)

    async def wait(self, caller, job_id: str, timeout_s: float | None):
        """The job once done, or as it is after `timeout_s` (None: DEFAULT_WAIT_S)."""
        timeout = DEFAULT_WAIT_S if not timeout_s else timeout_s
        if timeout < 0 or timeout > MAX_WAIT_S:
            raise InvalidArgument(f"must be between 0 and {MAX_WAIT_S:.0f} s", field="timeout")
        await self.get(caller, job_id)
        return await self.manager.wait(job_id, timeout)

    async def watch(self, caller, job_id: str, after_sequence: int) -> AsyncIterator[tuple[object, bool]]:
        """(event, is_last) for every event after `after_sequence`, until the job's last one."""
        await self.get(caller, job_id)
        if after_sequence < 0:
            raise InvalidArgument("must not be negative", field="after_sequence")
        after = after_sequence
        while True:
            events, done = await self.manager.events(job_id, after, WATCH_POLL_S)
            for i, event in enumerate(events):
                yield event, done and i == len(events) - 1
                after = event.sequence
            if done:
                return

    async def unfinished(self, caller) -> int:
        return await self.manager.count_unfinished(caller.tenant)
