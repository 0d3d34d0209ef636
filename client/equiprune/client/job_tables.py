"""Tables of jobs and artifacts: a job's full report and headline, the jobs and artifacts lists,
one artifact's line and a job's outputs.

Separate from report_tables (which renders the per-group numbers a job's report holds) and
serving_tables (served models and their monitors).
"""

from __future__ import annotations

from typing import Iterable

from equiprune.v1 import artifacts_pb2, jobs_pb2

from .report_tables import chosen_split, comparison_table, diagnostics_table, sweep_table
from .specs import ARTIFACT_KINDS, JOB_KINDS, JOB_STATES
from .table_format import _time, render, size


def outputs_lines(result: jobs_pb2.JobResult) -> list[str]:
    return [f"{o.role}: {o.artifact.artifact_id}  {o.artifact.display_name}  ({size(o.artifact.size_bytes)})"
            for o in result.outputs]


def job_report(job: jobs_pb2.Job) -> str:
    """Everything worth reading about a job: state, error or result tables, outputs."""
    lines = [job_headline(job)]
    if job.state in (jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED) and job.HasField("error"):
        lines.append(f"error: {job.error.code}: {job.error.message}")
    if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        return "\n".join(lines)
    result = job.result
    if result.HasField("diagnostics") and result.diagnostics.groups:
        lines += ["", diagnostics_table(result.diagnostics)]
    if result.reports:
        lines += ["", comparison_table(result.reports, chosen_split(job))]
    if result.sweep:
        lines += ["", sweep_table(result)]
    facts = []
    if result.HasField("measured_sparsity"):
        facts.append(f"measured sparsity of prunable weights: {result.measured_sparsity:.3f}")
    if result.parameters_before and result.parameters_after != result.parameters_before:
        facts.append(f"parameters: {result.parameters_before} → {result.parameters_after}")
    facts += [f"note: {note}" for note in result.notes]
    if facts:
        lines += [""] + facts
    if result.outputs:
        lines += ["", "outputs:"] + ["  " + line for line in outputs_lines(result)]
    return "\n".join(lines)


def job_headline(job: jobs_pb2.Job) -> str:
    return f"job {job.job_id} ({JOB_KINDS.name(job.spec.kind)}): {JOB_STATES.name(job.state)}"


def jobs_table(jobs: Iterable[jobs_pb2.Job]) -> str:
    rows = [[j.job_id, JOB_KINDS.name(j.spec.kind), JOB_STATES.name(j.state), j.progress.phase,
             _time(j.create_time) if j.HasField("create_time") else "-"] for j in jobs]
    if not rows:
        return "(no jobs)"
    return "\n".join(render(["job", "kind", "state", "phase", "created"], rows))


def artifacts_table(artifacts: Iterable[artifacts_pb2.Artifact]) -> str:
    rows = [[a.artifact_id, ARTIFACT_KINDS.name(a.kind), a.display_name, size(a.size_bytes), a.sha256[:12],
             a.source] for a in artifacts]
    if not rows:
        return "(no artifacts)"
    return "\n".join(render(["artifact", "kind", "name", "size", "sha256", "source"], rows, right=(3,)))


def artifact_line(artifact: artifacts_pb2.Artifact) -> str:
    described = " ".join(f"{k}={v}" for k, v in sorted(artifact.description.items()))
    return (f"{artifact.artifact_id}  {ARTIFACT_KINDS.name(artifact.kind)}  {artifact.display_name}  "
            f"{size(artifact.size_bytes)}  sha256 {artifact.sha256}" + (f"  {described}" if described else ""))
