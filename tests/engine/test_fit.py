"""A model that does not fit its dataset is refused before any work, naming the field — in
the engine CLI (exit 2, `error: <field>: <problem>`) and through `engine.fit`, which the
service's jobs use too."""

from __future__ import annotations

import pytest
import torch

from equiprune.engine.cli import main as cli_main
from equiprune.engine.dataset import GroupDataset, save_dataset
from equiprune.engine.errors import InvalidDatasetError, InvalidModelError
from equiprune.engine.fit import check_architecture_fits, check_model_fits
from equiprune.engine.models import ArchitectureSpec, build_model, save_safetensors

N = 40


@pytest.fixture(scope="module")
def dataset() -> GroupDataset:
    # 6 features, 5 classes.
    return GroupDataset(inputs=torch.randn(N, 6), labels=torch.arange(N) % 5,
                        attributes={"g": torch.arange(N) % 2}, attribute_values={"g": ("a", "b")})


def _mlp(features: int, classes: int) -> ArchitectureSpec:
    return ArchitectureSpec("mlp", {"in_features": features, "num_classes": classes})


def test_a_model_that_fits(dataset) -> None:
    assert check_model_fits(build_model(_mlp(6, 5)), dataset) == 5
    assert check_architecture_fits(_mlp(6, 7), dataset).outputs == 7


def test_labels_beyond_the_outputs_are_refused(dataset) -> None:
    with pytest.raises(InvalidDatasetError) as info:
        check_model_fits(build_model(_mlp(6, 3)), dataset)
    assert info.value.field == "dataset.labels" and "outputs" in info.value.problem
    with pytest.raises(InvalidModelError, match="3 outputs but the dataset has 5 classes"):
        check_architecture_fits(_mlp(6, 3), dataset, field="arch_kwargs")


def test_a_feature_width_that_does_not_match_is_refused(dataset) -> None:
    with pytest.raises(InvalidModelError) as info:
        check_model_fits(build_model(_mlp(7, 5)), dataset, field="spec.model")
    assert info.value.field == "spec.model" and "cannot take this dataset's samples of shape (6,)" in info.value.problem
    with pytest.raises(InvalidModelError) as info:
        check_architecture_fits(_mlp(8, 5), dataset, field="arch_kwargs")
    assert info.value.field == "arch_kwargs"


@pytest.mark.parametrize(("command", "fragment"), [
    (["train", "--arch", "mlp", "--arch-kwargs", '{"in_features": 6, "num_classes": 3}'], "error: train.architecture_kwargs: "),
    (["train", "--arch", "mlp", "--arch-kwargs", '{"in_features": 8, "num_classes": 5}'], "error: train.architecture_kwargs: "),
    (["compress", "--model", "{narrow}", "--group-by", "g"], "error: dataset.labels: "),
    (["compress", "--model", "{wide}", "--group-by", "g"], "error: model: "),
    (["budget", "--model", "{wide}", "--group-by", "g"], "error: model: "),
], ids=["train: too few outputs", "train: wrong width", "compress: labels beyond outputs",
        "compress: wrong width", "budget: wrong width"])
def test_the_engine_cli_refuses_before_any_work(dataset, tmp_path, capsys, command, fragment) -> None:
    data = tmp_path / "d.npz"
    save_dataset(dataset, data)
    models = {"narrow": _mlp(6, 3), "wide": _mlp(7, 5)}
    for name, spec in models.items():
        save_safetensors(build_model(spec), spec, tmp_path / f"{name}.safetensors")
    paths = {"{narrow}": str(tmp_path / "narrow.safetensors"), "{wide}": str(tmp_path / "wide.safetensors")}
    argv = [paths.get(a, a) for a in command]
    out = tmp_path / ("o.safetensors" if command[0] == "train" else "out")
    code = cli_main([*argv, "--dataset", str(data), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err
    assert not out.exists()  # refused before any work
