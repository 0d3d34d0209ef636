"""Models in and out: the architecture registry, built-in architectures, and loading/saving
in safetensors (dense or sparse) and torch.export (.pt2) form.

    from equiprune.engine.models import ArchitectureSpec, build_model, load_model
    loaded = load_model("model.safetensors")          # spec read from the file's metadata
    loaded.module, loaded.format, loaded.exported_training
"""

from equiprune.engine.models.io import (
    LoadedModel,
    exported_training_mode,
    load_exported,
    load_model,
    load_safetensors,
    save_exported,
    save_safetensors,
)
from equiprune.engine.models.registry import (
    ArchitectureSpec,
    available_architectures,
    build_model,
    example_input_shape,
    register_architecture,
)
from equiprune.engine.models.sparse import StorageSizes, load_sparse, load_sparse_model, save_sparse, storage_sizes

__all__ = [
    "ArchitectureSpec",
    "LoadedModel",
    "StorageSizes",
    "available_architectures",
    "build_model",
    "example_input_shape",
    "exported_training_mode",
    "load_exported",
    "load_model",
    "load_safetensors",
    "load_sparse",
    "load_sparse_model",
    "register_architecture",
    "save_exported",
    "save_safetensors",
    "save_sparse",
    "storage_sizes",
]
