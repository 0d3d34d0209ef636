"""Server settings: validated once at the edge (pydantic), then passed around as plain data.

The embedded default keeps everything under one data directory: the SQLite job store, the
artifact folder and the jobs' working folders (checkpoints). In a cluster the artifact root
may be an fsspec URL (object storage) so that workers on other nodes read and write it.
"""

from __future__ import annotations

from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from equiprune.engine import machine

from equiprune.service.artifacts.fetch import protocol_setting_problem

MiB = 1024 * 1024
GiB = 1024 * MiB
DAY_S = 86400


def _share_of_memory(divisor: int, floor: int = GiB) -> int:
    """A default limit that follows what this machine can hold."""
    return max(floor, machine.memory_bytes() // divisor)


class ServerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = Field(description="where the job database, artifacts and job folders live")
    host: str = "127.0.0.1"
    grpc_port: int = Field(9000, ge=1, le=65535)
    http_port: int = Field(8000, ge=1, le=65535, description="Serve's HTTP proxy (unused by the API; must not collide)")
    application_name: str = "equiprune"
    artifact_root: str | None = Field(None, description="local folder or fsspec URL; default <data_dir>/artifacts")
    database_path: Path | None = Field(None, description="SQLite file; default <data_dir>/jobs.sqlite")
    import_roots: tuple[Path, ...] = Field((), description="local folders ImportArtifact may read from")
    import_protocols: tuple[str, ...] = Field((), description="remote protocols ImportArtifact may fetch from "
                                              "(https, s3, ...); none by default (docs/service.md)")
    import_allow_private_addresses: bool = Field(False, description="let http(s) imports reach loopback, "
                                                 "private, link-local and other non-global addresses")
    max_upload_bytes: int = Field(2 * 1024 * MiB, ge=1)
    max_chunk_bytes: int = Field(2 * MiB, ge=1024, le=3 * MiB)  # below gRPC's 4 MiB message limit
    upload_ttl_s: float = Field(86400.0, gt=0, description="an upload session not finished within this is "
                                                           "removed, its bytes with it")
    free_disk_reserve_bytes: int = Field(GiB, ge=0, description="disk kept free: the sizes open uploads "
                                                                "announced must fit in what is left")
    max_unfinished_jobs: int = Field(100, ge=1, description="queued + running jobs; more are refused (RESOURCE_EXHAUSTED)")
    max_attempts: int = Field(3, ge=1, description="runs of one job across service restarts before it is failed")
    progress_interval_s: float = Field(0.5, gt=0, description="least time between two step events of a job")
    metrics_port: int = Field(9464, ge=1, le=65535, description="Prometheus exporter of the monitor (/metrics)")
    monitor_windows_s: tuple[int, ...] = Field((300, 3600, 86400), min_length=1,
                                               description="sliding windows of the monitor, in seconds")
    monitor_min_count: int = Field(30, ge=1, description="outcomes a group needs in a window to be judged")
    monitor_persist_interval_s: float = Field(10.0, gt=0, description="how often monitor state is written to disk")
    # The sandbox every client file is parsed, validated, loaded and run in (docs/security.md).
    sandbox_isolation: Literal["full", "limits-only"] = Field(
        "full", description="full: each sandbox gets a user of its own, no network and a private /tmp (needs root); "
                            "limits-only: resource limits alone, for unprivileged deployments (weaker)")
    sandbox_uid_base: int = Field(2**20, ge=1000, le=2**31 - 2**23, description="sandbox user ids are this plus a pid")
    sandbox_validation_memory_bytes: int = Field(default_factory=lambda: _share_of_memory(4), ge=256 * MiB)
    sandbox_validation_cpu_seconds: int = Field(600, ge=1)
    sandbox_validation_timeout_s: float = Field(900.0, gt=0, description="wall-clock limit of one validation")
    sandbox_job_memory_bytes: int = Field(default_factory=lambda: _share_of_memory(2), ge=256 * MiB)
    sandbox_job_cpu_seconds: int = Field(7 * DAY_S, ge=1, description="CPU time one job may use (all its threads)")
    sandbox_job_timeout_s: float = Field(7 * DAY_S, gt=0, description="wall-clock limit of one run of a job")
    sandbox_serving_memory_bytes: int = Field(default_factory=lambda: _share_of_memory(8), ge=256 * MiB)
    sandbox_serving_cpu_seconds: int = Field(30 * DAY_S, ge=1, description="CPU time of one served model's process; "
                                             "it is restarted when it runs out")
    sandbox_serving_timeout_s: float = Field(60.0, gt=0, description="wall-clock limit of one batch's forward pass; "
                                             "a served model's process that takes longer is stopped and restarted")
    # Limits a model or dataset must fit, checked before anything is allocated; None: what
    # this machine can hold (engine ModelLimits.for_machine, default_max_dataset_bytes).
    max_model_parameters: int | None = Field(None, ge=1)
    max_model_input_elements: int | None = Field(None, ge=1, description="values in one sample")
    max_model_activation_elements: int | None = Field(None, ge=1, description="activations of one sample")
    max_dataset_bytes: int | None = Field(None, ge=1, description="memory a loaded dataset may take")

    @field_validator("data_dir", "database_path")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("import_roots")
    @classmethod
    def _absolute_roots(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        return tuple(p.expanduser().resolve() for p in value)

    @field_validator("import_protocols")
    @classmethod
    def _importable_protocols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(p.strip().lower().removesuffix("://") for p in value))
        for name in names:
            problem = protocol_setting_problem(name)
            if problem is not None:
                raise ValueError(problem)
        return names

    @property
    def artifacts(self) -> str:
        return self.artifact_root or str(self.data_dir / "artifacts")

    @property
    def database(self) -> Path:
        return self.database_path or self.data_dir / "jobs.sqlite"

    @property
    def tenants_database(self) -> Path:
        """Tenants and hashed API tokens (tenants/store.py)."""
        return self.data_dir / "tenants.sqlite"

    @property
    def admin_token_path(self) -> Path:
        """The first admin token, written (0600) by `equiprune serve` on its first start."""
        return self.data_dir / "admin.token"

    @property
    def ray_token_path(self) -> Path:
        """The token the embedded Ray requires on its own ports (RAY_AUTH_MODE=token)."""
        return self.data_dir / "ray.token"

    @property
    def jobs_dir(self) -> Path:
        """Per-job working folders (checkpoints, outputs before they enter the store)."""
        return self.data_dir / "jobs"

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id
