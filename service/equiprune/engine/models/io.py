"""Reading and writing models: safetensors weights with an architecture spec, or a
``torch.export`` program (.pt2). Nothing here ever unpickles what a client sent.

Safetensors is the preferred format: plain tensors plus a JSON header, into which we write the
`ArchitectureSpec` (``__metadata__["equiprune.spec"]``) so that one file says what to build.
Everything a file could get wrong (keys, shapes, dtypes, NaN/inf) is checked against the
architecture before loading and reported with the offending tensor names.

A .pt2 file carries its own graph, so it needs no registered architecture, but it is frozen
in the mode it was exported in: torch cannot switch an exported module between train and eval
(``.train()``/``.eval()`` raise). `LoadedModel.exported_training` records that mode.

Before torch reads a .pt2, `pt2_check.audit_pt2_archive` refuses archives that could run code
on load (``torch.export.load`` is not safe for untrusted files; that module says why) and
rebuilds the archive from the audited entries: torch only ever reads the rebuilt copy.

The formats live in their own modules; this one dispatches on the bytes (`load_model`) and
re-exports every public name, so callers keep importing from `equiprune.engine.models.io`:
`io_common` (LoadedModel, sources, field names), `io_safetensors`, `io_exported` (.pt2) and
`io_state_checks` (state dicts against an architecture).
"""

from __future__ import annotations

from equiprune.engine.errors import UnsupportedOperationError
from equiprune.engine.models.footprint import ModelLimits
from equiprune.engine.models.io_common import (
    DENSE_FORMAT,
    FORMAT_METADATA_KEY,
    SPEC_METADATA_KEY,
    WEIGHTS_FIELD,
    LoadedModel,
    ModelSource,
    read_source,
    write_target,
)
from equiprune.engine.models.io_exported import (
    EXPORT_METADATA_FILE,
    exported_training_mode,
    load_exported,
    save_exported,
)
from equiprune.engine.models.io_safetensors import (
    SafetensorsHeader,
    load_safetensors,
    loaded_from_state,
    looks_like_safetensors,
    model_from_state_dict,
    read_safetensors,
    resolve_spec,
    safetensors_header,
    safetensors_metadata,
    save_safetensors,
    spec_from_metadata,
    state_dict_for_saving,
)
from equiprune.engine.models.io_state_checks import MAX_NAMES_IN_MESSAGE, check_state_dict
from equiprune.engine.models.pt2_check import EXPORTED_FIELD
from equiprune.engine.models.registry import ArchitectureSpec
from equiprune.engine.models.sniff import is_torch_save_zip

__all__ = [
    "DENSE_FORMAT",
    "EXPORTED_FIELD",
    "EXPORT_METADATA_FILE",
    "FORMAT_METADATA_KEY",
    "MAX_NAMES_IN_MESSAGE",
    "SPEC_METADATA_KEY",
    "WEIGHTS_FIELD",
    "LoadedModel",
    "ModelSource",
    "SafetensorsHeader",
    "check_state_dict",
    "exported_training_mode",
    "load_exported",
    "load_model",
    "load_safetensors",
    "loaded_from_state",
    "looks_like_safetensors",
    "model_from_state_dict",
    "read_safetensors",
    "read_source",
    "resolve_spec",
    "safetensors_header",
    "safetensors_metadata",
    "save_exported",
    "save_safetensors",
    "spec_from_metadata",
    "state_dict_for_saving",
    "write_target",
]


def load_model(source: ModelSource, spec: ArchitectureSpec | None = None, *,
               limits: ModelLimits | None = None, allow_exported: bool = True) -> LoadedModel:
    """Load whatever the bytes are: a .pt2 (zip), a sparse or a dense safetensors file, within
    `limits` (this machine's defaults when None). With `allow_exported` False only the
    data-only formats (safetensors: tensors and JSON, read by our own architecture code) are
    accepted: a .pt2 carries a graph torch executes."""
    data = read_source(source, WEIGHTS_FIELD)
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06") and not is_torch_save_zip(data):
        if not allow_exported:
            raise UnsupportedOperationError(
                EXPORTED_FIELD, "only safetensors models are accepted here (a .pt2 program is only ever loaded in "
                                "the sandbox); run the job with one worker, or upload the weights as safetensors")
        return load_exported(data, spec, limits=limits)
    if looks_like_safetensors(data):
        metadata = safetensors_metadata(data)
        # Imported here: sparse builds on this module.
        from equiprune.engine.models import sparse

        if sparse.is_sparse_metadata(metadata):
            return sparse.load_sparse_model(data, spec, limits=limits)
    return load_safetensors(data, spec, limits=limits)
