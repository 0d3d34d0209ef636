"""One factory: settings, the artifact store and the planes are built here and nowhere else,
so every replica, task and tool gets the same store with the same limits."""

from __future__ import annotations

from typing import Any

from equiprune.service.settings import ServerSettings


def settings_from(value: Any) -> ServerSettings:
    """Settings as passed between processes (a JSON dict), validated once more on arrival."""
    return value if isinstance(value, ServerSettings) else ServerSettings.model_validate(value)


def prepare_data_dir(settings) -> None:
    """The data folder is the service's alone: sandboxed workers run as other users and must not
    read the job database, other tenants' artifacts or other jobs' folders (docs/security.md).
    Here, not in app.py, so that the launcher can prepare it before anything imports Ray."""
    s = settings_from(settings)
    s.data_dir.mkdir(parents=True, exist_ok=True)
    s.data_dir.chmod(0o700)


def artifact_store(settings):
    """The artifact store the settings describe."""
    from equiprune.service.artifacts.store import ArtifactStore

    s = settings_from(settings)
    return ArtifactStore(s.artifacts, max_upload_bytes=s.max_upload_bytes, max_chunk_bytes=s.max_chunk_bytes,
                         import_roots=[str(p) for p in s.import_roots], import_protocols=s.import_protocols,
                         import_allow_private_addresses=s.import_allow_private_addresses,
                         cache_dir=str(s.data_dir / "cache"), upload_ttl_s=s.upload_ttl_s,
                         free_disk_reserve_bytes=s.free_disk_reserve_bytes)


def tenant_store(settings):
    """The tenants and tokens database (tenants/store.py), shared by every replica and the
    launcher, which creates the first admin token."""
    from equiprune.service.tenants.store import TenantStore

    return TenantStore(settings_from(settings).tenants_database)


def planes(settings, *, manager, monitor, models):
    """(artifacts, jobs, serving, tenants) planes over the given backends (objects whose async
    methods are the job manager's, the monitor's and the model server's)."""
    from equiprune.service.artifacts.plane import ArtifactsPlane
    from equiprune.service.jobs.plane import JobsPlane
    from equiprune.service.sandbox import sandbox_from_settings
    from equiprune.service.serving.plane import ServingPlane
    from equiprune.service.artifacts.validation import SandboxValidator
    from equiprune.service.tenants.auth import Authenticator
    from equiprune.service.tenants.plane import TenantsPlane

    s = settings_from(settings)
    store = artifact_store(s)
    sandbox = sandbox_from_settings(s)
    # Every upload and import is validated in a sandboxed worker, never in the caller's process.
    artifacts = ArtifactsPlane(store, SandboxValidator(sandbox, s.sandbox_validation_timeout_s), s.data_dir / "samples")
    jobs = JobsPlane(store, manager, sandbox.config.engine_model_limits())
    serving = ServingPlane(store, sandbox, jobs, monitor, models, s.sandbox_validation_timeout_s)
    tenants_store = tenant_store(s)
    tenants = TenantsPlane(tenants_store, Authenticator(tenants_store), artifacts, jobs)
    return artifacts, jobs, serving, tenants
