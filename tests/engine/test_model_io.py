"""Loading and saving models: safetensors (dense and sparse) and torch.export .pt2 round
trips, mode detection, and every kind of bad file rejected with the right field — including
.pt2 archives crafted to make torch.export.load unpickle or execute code."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import pytest
import safetensors.torch
import torch
from torch import nn

from equiprune.engine.errors import InvalidModelError
from equiprune.engine.models.pt2_check import audit_pt2_archive
from equiprune.engine.pruning.masks import apply_masks
from equiprune.engine.models import (
    ArchitectureSpec,
    build_model,
    load_exported,
    load_model,
    load_safetensors,
    load_sparse,
    load_sparse_model,
    save_exported,
    save_safetensors,
    save_sparse,
    storage_sizes,
)

CNN = ArchitectureSpec("small_cnn", {"num_classes": 3, "in_channels": 3, "input_size": 8, "channels": [4, 8]})


def trained_like(spec: ArchitectureSpec) -> nn.Module:
    """A model whose BN statistics and counters are no longer at their initial values."""
    torch.manual_seed(0)
    model = build_model(spec).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, spec.kwargs.get("input_size", 8), spec.kwargs.get("input_size", 8)))
    return model.eval()


def bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_states_bit_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert bits(a[name]) == bits(b[name]), name


def expect_error(call, field: str, *fragments: str) -> InvalidModelError:
    with pytest.raises(InvalidModelError) as info:
        call()
    assert info.value.field == field, info.value
    for fragment in fragments:
        assert fragment in info.value.problem, info.value.problem
    return info.value


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return trained_like(CNN)


@pytest.fixture(scope="module")
def pt2_files(cnn) -> dict[bool, bytes]:
    files = {}
    for training in (True, False):
        buffer = io.BytesIO()
        save_exported(cnn, torch.randn(2, 3, 8, 8), buffer, training=training, spec=CNN)
        files[training] = buffer.getvalue()
    return files


# --- safetensors -----------------------------------------------------------------------------


def test_safetensors_round_trip_is_exact_for_weights_and_buffers(cnn, tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    save_safetensors(cnn, CNN, path)
    loaded = load_safetensors(path)
    assert loaded.format == "safetensors" and loaded.spec == CNN
    assert loaded.exported_training is None and loaded.example_input_shape == (1, 3, 8, 8)
    assert_states_bit_equal(cnn.state_dict(), loaded.module.state_dict())
    assert int(loaded.module.state_dict()["0.1.num_batches_tracked"]) == 2
    batch = torch.randn(5, 3, 8, 8)
    assert torch.equal(loaded.module(batch), cnn(batch))
    assert not loaded.module.training
    json.dumps(loaded.to_dict())


def test_safetensors_loads_from_bytes_and_file_objects(cnn, tmp_path) -> None:
    buffer = io.BytesIO()
    save_safetensors(cnn, CNN, buffer)
    for source in (buffer.getvalue(), io.BytesIO(buffer.getvalue()), memoryview(buffer.getvalue())):
        assert load_model(source).format == "safetensors"


def test_spec_argument_is_needed_when_the_file_carries_none(cnn) -> None:
    raw = safetensors.torch.save({k: v.contiguous() for k, v in cnn.state_dict().items()})
    expect_error(lambda: load_safetensors(raw), "model.architecture", "no architecture")
    assert torch.equal(load_safetensors(raw, CNN).module.state_dict()["5.weight"], cnn.state_dict()["5.weight"])


# --- .pt2 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_exported_round_trip_in_both_modes(cnn, pt2_files, training) -> None:
    loaded = load_model(pt2_files[training])
    assert loaded.format == "exported" and loaded.exported_training is training
    # The batch dimension was exported as dynamic: one sample is a batch the program accepts.
    assert loaded.spec == CNN and loaded.example_input_shape == (1, 3, 8, 8)
    assert_states_bit_equal(
        {k: v for k, v in cnn.state_dict().items()},
        {k: v for k, v in loaded.module.state_dict().items()},
    )
    batch = torch.randn(5, 3, 8, 8)  # another batch size: the batch dimension is dynamic
    reference = trained_like(CNN).train(training)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(batch), reference(batch))
    with pytest.raises(NotImplementedError):
        loaded.module.eval()  # why exported_training is recorded at all
    json.dumps(loaded.to_dict())


def test_export_leaves_the_eager_module_untouched(cnn) -> None:
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    save_exported(cnn, torch.randn(1, 3, 8, 8), io.BytesIO(), training=True)
    assert not cnn.training
    assert_states_bit_equal(before, cnn.state_dict())


def test_mode_of_a_client_export_is_read_from_the_graph(cnn) -> None:
    # Exported without equiprune: no metadata, only the ops tell the mode.
    for training in (True, False):
        buffer = io.BytesIO()
        torch.export.save(torch.export.export(cnn.train(training), (torch.randn(2, 3, 8, 8),)), buffer)
        loaded = load_exported(buffer.getvalue())
        assert loaded.exported_training is training and loaded.spec is None
    cnn.eval()


def test_mode_of_a_graph_without_mode_dependent_ops(tmp_path) -> None:
    mlp = build_model(ArchitectureSpec("mlp", {"in_features": 4}))
    plain = io.BytesIO()
    torch.export.save(torch.export.export(mlp, (torch.randn(2, 4),)), plain)
    assert load_exported(plain.getvalue()).exported_training is None  # undeterminable, and irrelevant
    path = tmp_path / "mlp.pt2"
    save_exported(mlp, torch.randn(3, 4), path, training=True)
    assert load_exported(path).exported_training is True  # from our metadata


# --- sparse ----------------------------------------------------------------------------------


def prune_unstructured(model: nn.Module, sparsity: float) -> None:
    """Mask the smallest-magnitude fraction of every conv/linear weight, the way pruning does."""
    masks = {}
    for name, param in model.named_parameters():
        if name.endswith("weight") and param.dim() > 1:
            k = int(sparsity * param.numel())
            threshold = param.detach().abs().reshape(-1).kthvalue(k).values
            masks[name] = param.detach().abs() > threshold
    apply_masks(model, masks)


def test_sparse_resnet20_round_trip_is_exact_and_small(tmp_path) -> None:
    spec = ArchitectureSpec("resnet20", {"num_classes": 10, "input_size": 8})  # size does not change the weights
    model = trained_like(spec)
    prune_unstructured(model, 0.9)
    zeros = model.fc.weight[model.fc.weight == 0]
    assert not torch.signbit(zeros).any()  # apply_masks writes +0.0, so no sign bits to store
    with torch.no_grad():  # a client's weights may still hold -0.0: it must survive bit-exactly
        model.fc.weight[model.fc.weight == 0] = torch.where(torch.arange(zeros.numel()) % 7 == 0, -0.0, 0.0)
    assert torch.signbit(model.fc.weight[model.fc.weight == 0]).any()
    path = tmp_path / "sparse.safetensors"
    save_sparse(model, spec, path)

    state, stored_spec = load_sparse(path)
    assert stored_spec == spec
    assert_states_bit_equal(model.state_dict(), state)
    loaded = load_model(path)  # dispatches on the metadata
    batch = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded.module(batch), model(batch))

    dense_path = tmp_path / "dense.safetensors"
    save_safetensors(model, spec, dense_path)
    ratio = os.path.getsize(path) / os.path.getsize(dense_path)
    sizes = storage_sizes(model, spec)
    print(f"ResNet-20 at 90% unstructured sparsity: sparse/dense file size = {ratio:.3f} "
          f"({sizes.sparse_bytes} / {sizes.dense_bytes} bytes)")
    assert ratio < 0.2
    assert sizes.sparse_bytes == os.path.getsize(path) and abs(sizes.dense_bytes - os.path.getsize(dense_path)) < 64


def test_sparse_encoding_preserves_every_bit_of_odd_values() -> None:
    weight = torch.zeros(40)
    weight[[1, 7, 30]] = torch.tensor([-0.0, float("nan"), 3.5])  # -0.0 is non-zero bits
    state = {
        "w": weight,
        "half": torch.zeros(64, dtype=torch.float16).index_fill_(0, torch.tensor([5]), 1.0),
        "bf": torch.randn(3, 3).to(torch.bfloat16),
        "count": torch.tensor(7),
        "flags": torch.zeros(100, dtype=torch.bool).index_fill_(0, torch.tensor([9]), True),
        "empty": torch.zeros(0, 4),
        "all_zero": torch.zeros(33),
    }
    decoded, spec = load_sparse(io.BytesIO(_sparse_bytes(state)))
    assert spec is None
    assert_states_bit_equal(state, decoded)


def _sparse_bytes(state, spec=None) -> bytes:
    buffer = io.BytesIO()
    save_sparse(state, spec, buffer)
    return buffer.getvalue()


def test_sparse_file_with_inconsistent_layout_is_rejected() -> None:
    data = _sparse_bytes({"w": torch.zeros(64).index_fill_(0, torch.tensor([3]), 1.0)})
    tensors = safetensors.torch.load(data)
    tensors["values/w"] = torch.ones(2)  # two values for one kept position
    metadata = _metadata(data)
    expect_error(lambda: load_sparse(safetensors.torch.save(tensors, metadata=metadata)),
                 "model.weights", "values")
    expect_error(lambda: load_sparse_model(safetensors.torch.save({"x": torch.ones(1)})),
                 "model.weights", "not an equiprune sparse file")


def _metadata(data: bytes) -> dict:
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length])["__metadata__"]


# --- bad models ------------------------------------------------------------------------------


def _safetensors_of(state: dict, spec: ArchitectureSpec = CNN) -> bytes:
    metadata = {"equiprune.spec": json.dumps(spec.to_dict())}
    return safetensors.torch.save({k: v.contiguous() for k, v in state.items()}, metadata=metadata)


def test_unknown_architecture_and_bad_kwargs_in_the_file(cnn) -> None:
    state = cnn.state_dict()
    unknown = ArchitectureSpec("vgg99", {})
    expect_error(lambda: load_model(_safetensors_of(state, unknown)), "model.architecture", "vgg99")
    bad_kwargs = ArchitectureSpec("small_cnn", {**CNN.kwargs, "depth": 3})
    expect_error(lambda: load_model(_safetensors_of(state, bad_kwargs)), "model.kwargs.depth")


def test_missing_and_unexpected_keys_are_named(cnn) -> None:
    state = dict(cnn.state_dict())
    del state["5.weight"]
    state["head.extra"] = torch.zeros(2)
    expect_error(lambda: load_model(_safetensors_of(state)), "model.weights",
                 "1 missing (5.weight)", "1 unexpected (head.extra)")


def test_wrong_shapes_are_named(cnn) -> None:
    other = ArchitectureSpec("small_cnn", {**CNN.kwargs, "num_classes": 5})
    expect_error(lambda: load_model(_safetensors_of(cnn.state_dict()), other), "model.weights",
                 "2 tensors have the wrong shape", "5.weight: file (3, 8) vs architecture (5, 8)")


def test_nan_weights_and_integer_weights_are_rejected(cnn) -> None:
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    state["0.0.weight"][0, 0, 0, 0] = float("nan")
    expect_error(lambda: load_model(_safetensors_of(state)), "model.weights", "NaN or inf", "0.0.weight")
    state = dict(cnn.state_dict())
    state["5.bias"] = torch.zeros(3, dtype=torch.int32)
    expect_error(lambda: load_model(_safetensors_of(state)), "model.weights", "5.bias: torch.int32")


def test_torch_save_files_are_never_unpickled(cnn, tmp_path) -> None:
    zipped = io.BytesIO()
    torch.save(cnn.state_dict(), zipped)
    legacy = io.BytesIO()
    torch.save(cnn.state_dict(), legacy, _use_new_zipfile_serialization=False)
    for loader in (load_safetensors, load_model):
        expect_error(lambda: loader(zipped.getvalue(), CNN), "model.weights", "not a safetensors file", "torch.save")
        expect_error(lambda: loader(legacy.getvalue(), CNN), "model.weights", "not a safetensors file", "pickle")
    expect_error(lambda: load_exported(zipped.getvalue()), "model.exported_program", "torch.save")


def test_random_empty_and_truncated_files(cnn) -> None:
    generator = torch.Generator().manual_seed(1)
    noise = bytes(torch.randint(0, 256, (4096,), generator=generator, dtype=torch.uint8).tolist())
    expect_error(lambda: load_model(noise, CNN), "model.weights", "not a safetensors file")
    expect_error(lambda: load_model(b"", CNN), "model.weights", "not a safetensors file")
    whole = _safetensors_of(cnn.state_dict())
    expect_error(lambda: load_model(whole[:-100]), "model.weights", "truncated")
    expect_error(lambda: load_model(whole[:200]), "model.weights")
    expect_error(lambda: load_model("/nonexistent/model.safetensors"), "model.weights", "cannot read")


def test_zip_that_is_not_a_pt2(pt2_files) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    expect_error(lambda: load_model(buffer.getvalue()), "model.exported_program", "not a torch.export .pt2")
    expect_error(lambda: load_exported(pt2_files[False][: len(pt2_files[False]) // 2]), "model.exported_program")


# --- crafted .pt2 archives -------------------------------------------------------------------


def rewrite_pt2(data: bytes, changes: dict[str, bytes | None]) -> bytes:
    """Copy a .pt2 replacing (value) or deleting (None) entries, paths below the root folder."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        root = source.namelist()[0].split("/", 1)[0]
        for name in source.namelist():
            relative = name.split("/", 1)[1]
            if relative in changes:
                if changes[relative] is not None:
                    target.writestr(name, changes.pop(relative))
                else:
                    changes.pop(relative)
            else:
                target.writestr(name, source.read(name))
        for relative, content in changes.items():
            target.writestr(f"{root}/{relative}", content)
    return out.getvalue()


def _edit_json(data: bytes, entry: str, edit) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        content = json.loads(archive.read(f"{root}/{entry}"))
    edit(content)
    return {entry: json.dumps(content).encode()}


class MakeDirectory:
    """A pickle payload that creates a directory when unpickled: the canary for code execution."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_rewritten_archive_still_loads(pt2_files) -> None:
    # Control for the tests below: the rewriting itself does not break a .pt2.
    assert load_exported(rewrite_pt2(pt2_files[False], {})).exported_training is False


def _first_node(program: dict) -> dict:
    return program["graph_module"]["graph"]["nodes"][0]


@pytest.mark.parametrize(
    ("name", "changes", "fragment"),
    [
        ("pickled weight", lambda d: _edit_json(d, "data/weights/model_weights_config.json",
                                                lambda c: next(iter(c["config"].values())).update(use_pickle=True)),
         "stored as a pickle"),
        ("guard code", lambda d: _edit_json(d, "models/model.json",
                                            lambda p: p.update(guards_code=["__import__('os').system('true')"])),
         "guard code"),
        ("call to torch.load", lambda d: _edit_json(d, "models/model.json",
                                                    lambda p: _first_node(p).update(target="torch.load")),
         "torch.load"),
        ("aten.from_file", lambda d: _edit_json(
            d, "models/model.json", lambda p: _first_node(p).update(target="torch.ops.aten.from_file.default")),
         "reads files"),
        ("eval in a shape expression", lambda d: _edit_json(
            d, "models/model.json",
            lambda p: next(iter(p["graph_module"]["graph"]["tensor_values"].values()))["sizes"][0].update(
                as_expr={"expr_str": "__import__('os').getcwd()", "hint": None})),
         "symbolic shape expression"),
        ("AOTInductor library", lambda d: {"data/aotinductor/model/model.so": b"\x7fELF"}, "not allowed"),
        ("legacy pickled weights", lambda d: {"data/weights/model.pt": b"\x80\x02N."}, "not allowed"),
        ("not a pt2 format", lambda d: {"archive_format": b"zip"}, "archive_format"),
        ("broken program json", lambda d: {"models/model.json": b"{not json"}, "not valid JSON"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_crafted_archives_are_refused_before_torch_reads_them(pt2_files, name, changes, fragment) -> None:
    crafted = rewrite_pt2(pt2_files[False], changes(pt2_files[False]))
    expect_error(lambda: load_exported(crafted), "model.exported_program", fragment)


def test_sample_inputs_are_never_read(pt2_files, tmp_path) -> None:
    # Every torch.export.save archive carries its sample inputs as a pickle: the audit drops
    # them unread, so even a payload there never runs and the program still loads.
    canary = tmp_path / "code-ran"
    payload = pickle.dumps(MakeDirectory(str(canary)), protocol=2)
    crafted = rewrite_pt2(pt2_files[False], {"data/sample_inputs/model.pt": payload})
    assert audit_pt2_archive(crafted).dropped_sample_inputs
    loaded = load_model(crafted)
    assert loaded.example_input_shape == (1, 3, 8, 8)
    assert not canary.exists()


def test_nan_in_exported_weights_is_rejected(cnn) -> None:
    broken = trained_like(CNN)
    with torch.no_grad():
        broken[-1].weight[0, 0] = float("inf")
    buffer = io.BytesIO()
    save_exported(broken, torch.randn(2, 3, 8, 8), buffer, training=False)
    expect_error(lambda: load_exported(buffer.getvalue()), "model.exported_program", "NaN or inf", "5.weight")
