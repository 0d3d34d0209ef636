"""Architectures and the registry: every built-in builds and runs, specs round-trip, bad
names and kwargs are reported by field, and operator architectures arrive by entry point."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch
from torch import nn

from equiprune.engine.errors import InvalidModelError
from equiprune.engine.models import registry
from equiprune.engine.models.registry import (
    ArchitectureSpec,
    available_architectures,
    build_model,
    example_input_shape,
)

# Two geometries per architecture; the second exercises other channel/class counts and, for
# the ImageNet-style networks, the large-input stem. Widths are cut where the default is slow.
CASES = [
    ("mlp", {"num_classes": 3, "in_features": 12}),
    ("mlp", {"num_classes": 5, "in_features": 48, "hidden": [32, 16, 8], "dropout": 0.1}),
    ("small_cnn", {"num_classes": 10, "in_channels": 3, "input_size": 32}),
    ("small_cnn", {"num_classes": 4, "in_channels": 1, "input_size": 20, "channels": [8, 16]}),
    ("resnet20", {"num_classes": 10, "in_channels": 3, "input_size": 32}),
    ("resnet20", {"num_classes": 7, "in_channels": 1, "input_size": 16}),
    ("resnet56", {"num_classes": 100, "in_channels": 3, "input_size": 16}),
    ("resnet56", {"num_classes": 2, "in_channels": 1, "input_size": 8}),
    ("resnet18", {"num_classes": 10, "in_channels": 3, "input_size": 32}),
    ("resnet18", {"num_classes": 6, "in_channels": 1, "input_size": 72, "base_width": 16}),
    ("resnet34", {"num_classes": 10, "in_channels": 3, "input_size": 16, "base_width": 16}),
    ("resnet34", {"num_classes": 3, "in_channels": 1, "input_size": 80, "base_width": 8}),
    ("resnet50", {"num_classes": 10, "in_channels": 3, "input_size": 32}),
    ("resnet50", {"num_classes": 4, "in_channels": 1, "input_size": 72, "base_width": 8}),
    ("mobilenet_v2", {"num_classes": 10, "in_channels": 3, "input_size": 32}),
    ("mobilenet_v2", {"num_classes": 5, "in_channels": 1, "input_size": 96, "width_mult": 0.5}),
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_all_builtins_are_registered() -> None:
    assert {name for name, _ in CASES} <= set(available_architectures())


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}-{i % 2}" for i, (n, _) in enumerate(CASES)])
def test_architecture_builds_and_runs(name: str, kwargs: dict) -> None:
    spec = ArchitectureSpec(name, kwargs)
    model = build_model(spec).eval()
    shape = example_input_shape(spec)
    batch = torch.randn(2, *shape[1:])
    with torch.no_grad():
        out = model(batch)
    assert out.shape == (2, kwargs["num_classes"])
    assert torch.isfinite(out).all()

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert isinstance(layers[0], nn.Linear if name == "mlp" else nn.Conv2d)
    assert isinstance(layers[-1], nn.Linear) and layers[-1].out_features == kwargs["num_classes"]
    assert not any(getattr(m, "inplace", False) for m in model.modules()), "in-place ops break torch.func"


def test_small_inputs_get_the_stride_one_stem_without_max_pool() -> None:
    small = build_model(ArchitectureSpec("resnet18", {"input_size": 32, "base_width": 8}))
    large = build_model(ArchitectureSpec("resnet18", {"input_size": 224, "base_width": 8}))
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.modules())
    assert small.stem[0].kernel_size == (3, 3) and small.stem[0].stride == (1, 1)
    assert any(isinstance(m, nn.MaxPool2d) for m in large.modules())
    assert large.stem[0].kernel_size == (7, 7) and large.stem[0].stride == (2, 2)


def test_cifar_resnet_sizes_match_the_paper() -> None:
    count = lambda name: sum(p.numel() for p in build_model(ArchitectureSpec(name, {})).parameters())  # noqa: E731
    assert 0.26e6 < count("resnet20") < 0.28e6  # 0.27M in He et al.; +2.8k for projection shortcuts
    assert 0.84e6 < count("resnet56") < 0.87e6  # 0.85M in He et al.


def test_shape_changing_shortcuts_are_1x1_projections() -> None:
    model = build_model(ArchitectureSpec("resnet20", {}))
    first_of_stage2 = model.stages[1][0]
    assert isinstance(first_of_stage2.shortcut[0], nn.Conv2d)
    assert first_of_stage2.shortcut[0].kernel_size == (1, 1)
    assert isinstance(first_of_stage2.shortcut[1], nn.BatchNorm2d)
    assert isinstance(model.stages[0][0].shortcut, nn.Identity)


def test_width_mult_scales_mobilenet() -> None:
    count = lambda w: sum(p.numel() for p in build_model(  # noqa: E731
        ArchitectureSpec("mobilenet_v2", {"num_classes": 10, "input_size": 32, "width_mult": w})).parameters())
    assert count(0.5) < count(1.0) < count(1.4)


def test_hessian_vector_product_through_resnet_with_torch_func() -> None:
    # Diagnostics differentiate twice with torch.func; in-place ops would break this.
    model = build_model(ArchitectureSpec("resnet20", {"num_classes": 3, "input_size": 8})).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v for k, v in model.named_buffers()}
    inputs, labels = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])

    def loss(p):
        logits = torch.func.functional_call(model, (p, buffers), (inputs,))
        return nn.functional.cross_entropy(logits, labels)

    vector = {k: torch.randn_like(v) for k, v in params.items()}
    _, hvp = torch.func.jvp(torch.func.grad(loss), (params,), (vector,))
    assert set(hvp) == set(params)
    assert all(torch.isfinite(t).all() for t in hvp.values())


# --- specs ---------------------------------------------------------------------------------


def test_spec_round_trips_through_dict_and_normalises_to_json_types() -> None:
    spec = ArchitectureSpec("mlp", {"hidden": (8, 4), "num_classes": 3})
    again = ArchitectureSpec.from_dict(spec.to_dict())
    assert again == spec and hash(again) == hash(spec)
    assert spec.to_dict() == {"name": "mlp", "kwargs": {"hidden": [8, 4], "num_classes": 3}}
    with pytest.raises(TypeError):
        spec.kwargs["num_classes"] = 4  # read-only


def test_spec_rejects_non_json_kwargs_and_malformed_dicts() -> None:
    with pytest.raises(InvalidModelError) as info:
        ArchitectureSpec("mlp", {"hidden": object()})
    assert info.value.field == "model.kwargs"
    with pytest.raises(InvalidModelError) as info:
        ArchitectureSpec.from_dict({"kwargs": {}})
    assert info.value.field == "model.architecture"
    with pytest.raises(InvalidModelError) as info:
        ArchitectureSpec.from_dict({"name": "mlp", "kwarg": {}})
    assert info.value.field == "model.kwarg"


def test_example_input_shape_uses_factory_defaults() -> None:
    assert example_input_shape(ArchitectureSpec("resnet20", {})) == (1, 3, 32, 32)
    assert example_input_shape(ArchitectureSpec("mlp", {"in_features": 7})) == (1, 7)


# --- bad names and kwargs ------------------------------------------------------------------


def test_unknown_architecture_lists_the_available_ones() -> None:
    with pytest.raises(InvalidModelError) as info:
        build_model(ArchitectureSpec("resnet21", {}))
    assert info.value.field == "model.architecture"
    assert "resnet20" in info.value.problem and "mobilenet_v2" in info.value.problem


@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("resnet20", {"num_class": 10}, "model.kwargs.num_class"),
        ("resnet20", {"num_classes": 1}, "model.kwargs.num_classes"),
        ("resnet20", {"num_classes": 10.5}, "model.kwargs.num_classes"),
        ("resnet20", {"num_classes": True}, "model.kwargs.num_classes"),
        ("resnet20", {"in_channels": "3"}, "model.kwargs.in_channels"),
        ("resnet18", {"input_size": 0}, "model.kwargs.input_size"),
        ("small_cnn", {"channels": []}, "model.kwargs.channels"),
        ("small_cnn", {"channels": [8, 16, 32], "input_size": 2}, "model.kwargs.input_size"),
        ("mlp", {"hidden": [8, -1]}, "model.kwargs.hidden[1]"),
        ("mobilenet_v2", {"width_mult": 0}, "model.kwargs.width_mult"),
        ("mobilenet_v2", {"dropout": 1.5}, "model.kwargs.dropout"),
    ],
)
def test_bad_kwargs_name_the_field(name: str, kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidModelError) as info:
        build_model(ArchitectureSpec(name, kwargs))
    assert info.value.field == field


def test_integral_floats_from_json_are_accepted() -> None:
    model = build_model(ArchitectureSpec("mlp", {"num_classes": 4.0, "in_features": 6.0, "hidden": [8.0]}))
    assert model(torch.randn(2, 6)).shape == (2, 4)


# --- operator architectures by entry point -------------------------------------------------


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A fake installed distribution: a module plus dist-info with entry_points.txt."""

    def install(module_source: str, entry_points: str) -> None:
        (tmp_path / "eqp_test_plugin.py").write_text(textwrap.dedent(module_source))
        info = tmp_path / "eqp_test_plugin-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: eqp-test-plugin\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()
        registry.refresh_entry_points()

    yield install
    sys.modules.pop("eqp_test_plugin", None)
    monkeypatch.undo()
    importlib.invalidate_caches()
    registry.refresh_entry_points()


PLUGIN_MODULE = """
    from torch import nn

    def tiny_net(num_classes: int = 2, in_features: int = 4):
        return nn.Sequential(nn.Linear(in_features, 8), nn.ReLU(), nn.Linear(8, num_classes))
"""


def test_entry_point_architecture_is_listed_and_built(plugin_dir) -> None:
    plugin_dir(PLUGIN_MODULE, "[equiprune.architectures]\ntiny_net = eqp_test_plugin:tiny_net\n")
    assert "tiny_net" in available_architectures()
    spec = ArchitectureSpec("tiny_net", {"num_classes": 3})
    assert build_model(spec)(torch.randn(2, 4)).shape == (2, 3)
    assert example_input_shape(spec) == (1, 4)
    with pytest.raises(InvalidModelError) as info:
        build_model(ArchitectureSpec("tiny_net", {"depth": 3}))
    assert info.value.field == "model.kwargs.depth"


def test_broken_entry_point_is_named_in_the_error(plugin_dir) -> None:
    plugin_dir(PLUGIN_MODULE, "[equiprune.architectures]\nbroken_net = eqp_test_plugin:does_not_exist\n")
    with pytest.raises(InvalidModelError) as info:
        build_model(ArchitectureSpec("broken_net", {}))
    assert info.value.field == "model.architecture"
    assert "broken_net" in info.value.problem and "eqp_test_plugin:does_not_exist" in info.value.problem
    # The built-ins keep working next to a broken plugin.
    assert build_model(ArchitectureSpec("mlp", {})) is not None


def test_operator_factory_errors_become_invalid_model_errors(plugin_dir) -> None:
    plugin_dir(
        """
        def picky_net(num_classes: int = 2):
            if num_classes > 5:
                raise ValueError("at most 5 classes")
        """,
        "[equiprune.architectures]\npicky_net = eqp_test_plugin:picky_net\n",
    )
    with pytest.raises(InvalidModelError) as info:
        build_model(ArchitectureSpec("picky_net", {"num_classes": 9}))
    assert info.value.field == "model.kwargs" and "at most 5 classes" in info.value.problem
    with pytest.raises(InvalidModelError) as info:  # returns None, not a module
        build_model(ArchitectureSpec("picky_net", {}))
    assert info.value.field == "model.architecture"
