"""Budgets before allocation: a model is measured on the meta device and compared with the
file's header before anything sized by the file (or by its architecture kwargs) is allocated."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from equiprune.engine.errors import InvalidModelError
from equiprune.engine.models import ArchitectureSpec, build_model, load_model, save_exported, save_sparse
from equiprune.engine.models.footprint import ModelLimits, measure

TINY_LIMITS = ModelLimits(max_parameters=1_000, max_input_elements=1_000, max_activation_elements=1_000)


def _header_only_safetensors(spec: dict, tensors: dict[str, tuple[list[int], str]] | None = None) -> bytes:
    """A safetensors file whose header names `spec` and declares (small) tensors."""
    header: dict = {"__metadata__": {"equiprune.spec": json.dumps(spec)}}
    offset, data = 0, b""
    for name, (shape, dtype) in (tensors or {}).items():
        size = 4 * (shape[0] if shape else 1)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
        data += b"\0" * size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


_MEASURE = """
import resource, sys
from equiprune.engine.errors import InvalidModelError
from equiprune.engine.models import load_model
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_model(data)
except InvalidModelError as err:
    print(err.field, "|", err.problem)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def _refusal_and_growth(data: bytes, tmp_path) -> tuple[str, float]:
    """Load `data` in a fresh interpreter (its peak memory is its own): the refusal and how many
    MB the peak grew while loading."""
    path = tmp_path / "model"
    path.write_bytes(data)
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    return lines[0], float(lines[-1])


def test_a_tiny_file_naming_a_huge_architecture_allocates_nothing(tmp_path) -> None:
    # The attack of issue #8: ~250 bytes naming an MLP with a hidden width of 4·10⁶ (a 1.1 GB
    # model). Refused by comparing the header with the meta model: nothing is built for real.
    hostile = _header_only_safetensors({"name": "mlp", "kwargs": {"in_features": 64, "hidden": [4_000_000]}},
                                       {"x": ([1], "F32")})
    assert len(hostile) < 300
    refusal, grown_mb = _refusal_and_growth(hostile, tmp_path)
    assert refusal.startswith("model.weights | tensor names do not match")
    assert grown_mb < 50


@pytest.mark.parametrize("kwargs", [{"hidden": [10**9]}, {"num_classes": 10**12}, {"in_features": 10**12}],
                         ids=["width 1e9", "1e12 classes", "1e12 features"])
def test_absurd_architectures_are_refused_by_their_parameter_count(kwargs, tmp_path) -> None:
    refusal, grown_mb = _refusal_and_growth(_header_only_safetensors({"name": "mlp", "kwargs": kwargs}), tmp_path)
    assert refusal.startswith("model.kwargs | ") and "the limit is" in refusal
    assert grown_mb < 50


def test_an_absurd_input_size_is_refused_before_building() -> None:
    with pytest.raises(InvalidModelError, match="holds .* values; the limit is"):
        measure(ArchitectureSpec("small_cnn", {"input_size": 10**6}))


def test_measure_reports_parameters_input_activations_and_outputs() -> None:
    spec = ArchitectureSpec("resnet20", {"num_classes": 7})
    footprint = measure(spec)
    assert footprint.parameters == sum(p.numel() for p in build_model(spec).parameters())
    assert footprint.input_shape == (3, 32, 32) and footprint.outputs == 7
    assert footprint.activation_elements > 3 * 32 * 32


def test_an_input_the_architecture_cannot_take_names_the_field() -> None:
    with pytest.raises(InvalidModelError) as info:
        measure(ArchitectureSpec("mlp", {"in_features": 16}), (3, 8, 8), field="spec.train.architecture_kwargs")
    assert info.value.field == "spec.train.architecture_kwargs" and "cannot take one sample" in info.value.problem


def test_limits_apply_to_every_format(tmp_path) -> None:
    spec = ArchitectureSpec("mlp", {"in_features": 12, "num_classes": 3, "hidden": [200]})
    model = build_model(spec)
    dense = io.BytesIO()
    safetensors_bytes = safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()},
                                               metadata={"equiprune.spec": json.dumps(spec.to_dict())})
    sparse = tmp_path / "m.sparse.safetensors"
    save_sparse(model, spec, sparse)
    save_exported(model, torch.randn(2, 12), dense, training=False, spec=spec)
    for data in (safetensors_bytes, sparse.read_bytes(), dense.getvalue()):
        assert load_model(data).module is not None  # within this machine's limits
        with pytest.raises(InvalidModelError, match="limit is"):
            load_model(data, limits=TINY_LIMITS)


def test_a_sparse_layout_cannot_size_its_own_allocation(tmp_path) -> None:
    # The layout's shapes size what decoding allocates: a shape of 10¹² elements in a small
    # file must be refused against the architecture before decoding.
    spec = ArchitectureSpec("mlp", {"in_features": 4, "num_classes": 2, "hidden": [4]})
    path = tmp_path / "m.safetensors"
    model = build_model(spec)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # all pruned: every tensor is stored as a bitmask with a layout shape
    save_sparse(model, spec, path)
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    layout = json.loads(header["__metadata__"]["equiprune.sparse"])
    layout["shapes"] = {name: [10**6, 10**6] for name in layout["order"]}
    header["__metadata__"]["equiprune.sparse"] = json.dumps(layout)
    raw = json.dumps(header).encode()
    hostile = struct.pack("<Q", len(raw)) + raw + data[8 + length:]
    refusal, grown_mb = _refusal_and_growth(hostile, tmp_path)
    assert refusal.startswith("model.weights | 4 tensors have the wrong shape"), refusal
    assert grown_mb < 50


def test_activations_are_checked_when_loading() -> None:
    spec = ArchitectureSpec("small_cnn", {"num_classes": 3, "in_channels": 3, "input_size": 8, "channels": [4, 8]})
    data = safetensors.torch.save({k: v.contiguous() for k, v in build_model(spec).state_dict().items()},
                                  metadata={"equiprune.spec": json.dumps(spec.to_dict())})
    limits = ModelLimits(max_parameters=10**6, max_input_elements=10**6, max_activation_elements=500)
    with pytest.raises(InvalidModelError, match="activations for one sample"):
        load_model(data, limits=limits)


def test_machine_limits_scale_with_memory() -> None:
    small, large = ModelLimits.for_machine(2**30), ModelLimits.for_machine(64 * 2**30)
    assert large.max_parameters == 64 * small.max_parameters
    assert ModelLimits.for_machine(24 * 2**30).max_parameters == 24 * 2**30 // 32
