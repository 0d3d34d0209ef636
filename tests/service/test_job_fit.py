"""CreateJob's fit check between a model's and a dataset's descriptions (no sandbox, no Ray):
a model that flattens its samples (the MLP) takes any sample shape of as many elements."""

import io

import pytest

from equiprune.engine.jobs import DataConfig, JobSpec
from equiprune.engine.models import ArchitectureSpec, build_model, save_safetensors
from equiprune.engine.prune import PruningConfig
from equiprune.service.artifacts.validation import FLATTENS, check_job_fit, describe_model
from equiprune.service.errors import FailedPrecondition

DIGITS = {"sample_shape": "1x8x8", "classes": "10"}
SPEC = JobSpec(kind="prune", dataset="art-d", model="art-m", pruning=PruningConfig(sparsity=0.5),
               data=DataConfig(group_by=("cohort",)))


def _described(name: str, kwargs: dict, tmp_path) -> dict[str, str]:
    path = tmp_path / f"{name}.safetensors"
    spec = ArchitectureSpec(name, kwargs)
    save_safetensors(build_model(spec), spec, path)
    return describe_model(io.BytesIO(path.read_bytes()))


def test_an_mlp_takes_8x8_images_as_64_features(tmp_path):
    model = _described("mlp", {"in_features": 64, "num_classes": 10, "hidden": [16]}, tmp_path)
    assert model[FLATTENS] == "yes" and model["input_shape"] == "64"
    check_job_fit(SPEC, model, DIGITS)  # accepted: 1*8*8 == 64


def test_an_mlp_of_another_width_is_still_refused(tmp_path):
    model = _described("mlp", {"in_features": 63, "num_classes": 10, "hidden": [16]}, tmp_path)
    with pytest.raises(FailedPrecondition, match=r"samples have shape \[1, 8, 8\] but the model takes \[63\]"):
        check_job_fit(SPEC, model, DIGITS)


def test_a_model_that_does_not_flatten_keeps_the_exact_check(tmp_path):
    model = _described("small_cnn", {"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [4]}, tmp_path)
    assert FLATTENS not in model
    check_job_fit(SPEC, model, DIGITS)
    vector = {"input_shape": "64", "outputs": "10"}  # a vector model that never said it flattens
    with pytest.raises(FailedPrecondition, match="samples have shape"):
        check_job_fit(SPEC, vector, DIGITS)
