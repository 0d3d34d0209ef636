"""Where the service keeps jobs (SQLite) and artifacts (a folder or any fsspec filesystem)."""

from __future__ import annotations


def artifact_store(settings):
    """The artifact store the settings describe: one definition for every replica and task."""
    from .artifacts import ArtifactStore

    s = settings
    return ArtifactStore(s.artifacts, max_upload_bytes=s.max_upload_bytes, max_chunk_bytes=s.max_chunk_bytes,
                         import_roots=[str(p) for p in s.import_roots], import_protocols=s.import_protocols,
                         import_allow_private_addresses=s.import_allow_private_addresses,
                         cache_dir=str(s.data_dir / "cache"))
