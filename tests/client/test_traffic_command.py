"""`equiprune traffic` (client/traffic.py): Predict instances from the digits sample and from any
.npz dataset, bit for bit the inputs the engine evaluates (so a served model predicts what the
job's evaluation predicted), the flags, and hostile files refused as usage errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from equiprune.client import cli, traffic as traffic_module
from equiprune.client.serving import to_instance
from equiprune.engine.dataset import load_dataset
from equiprune.engine.evaluation import evaluate
from equiprune.engine.demo_data import SAMPLES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
N = 60
RACES, GENDERS, SPLITS = ["White", "Black", "Asian"], ["male", "female"], ["train", "test", "val"]


def traffic(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["traffic", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def served_inputs(records: list[dict], shape: tuple[int, ...]) -> np.ndarray:
    """What the model server feeds the model: each line as `predict` sends it (to_instance: a
    proto of float32 values), then float32 rows of the served input shape (model_server.py)."""
    rows = [list(to_instance(record).values) for record in records]
    return np.asarray(rows, dtype=np.float32).reshape(-1, *shape)


def arrays(**changes) -> dict:
    """A small dataset in the engine's format: uint8 NCHW images with per-channel statistics
    (the scaling path with the most steps), two attributes, three splits."""
    rng = np.random.default_rng(7)
    race, gender = np.arange(N) % 3, (np.arange(N) // 3) % 2
    split = np.arange(N) % 3
    images = rng.integers(0, 256, size=(N, 3, 4, 4), dtype=np.uint8)
    train = images[split == 0] / 255.0
    base = {"inputs": images, "labels": race.astype(np.int16), "label_names": np.array(RACES),
            "attr__race": race.astype(np.int8), "attr__race__names": np.array(RACES),
            "attr__gender": gender, "attr__gender__names": np.array(GENDERS),
            "split": split.astype(np.uint8), "split__names": np.array(SPLITS),
            "input_mean": train.mean(axis=(0, 2, 3)), "input_std": train.std(axis=(0, 2, 3))}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def faces(tmp_path) -> Path:
    path = tmp_path / "faces.npz"
    np.savez_compressed(path, **arrays())
    return path


def test_digits_sample_is_the_test_split_as_the_engine_holds_it(tmp_path, capsys):
    out = tmp_path / "traffic.jsonl"
    code, stdout, err = traffic(capsys, "--dataset", "sample:digits", "--out", str(out))
    SAMPLES["digits"](tmp_path / "digits.npz")  # what the server imports for sample:digits
    dataset = load_dataset(tmp_path / "digits.npz")
    rows = (dataset.split_codes == dataset.split_names.index("test")).nonzero().flatten()
    assert code == 0, err
    assert stdout == f"wrote {len(rows)} instances to {out}\n"
    records = read_lines(out)
    assert all(list(r) == ["values", "groups", "label"] for r in records)
    assert out.read_text().startswith('{"values": [')
    assert [r["label"] for r in records] == dataset.labels[rows].tolist()
    for attribute in ("cohort", "ink"):  # every attribute by default
        names = dataset.attribute_values[attribute]
        assert [r["groups"][attribute] for r in records] == [names[c] for c in dataset.attributes[attribute][rows]]
    # Normalised as the server expects them: bit for bit the engine's (normalised) inputs.
    expected = dataset.inputs[rows].numpy()
    assert np.array_equal(served_inputs(records, (1, 8, 8)).view(np.uint32), expected.view(np.uint32))


def test_a_served_model_predicts_what_the_evaluation_of_the_split_predicts(faces, tmp_path, capsys):
    out = tmp_path / "traffic.jsonl"
    code, _, err = traffic(capsys, "--dataset", str(faces), "--out", str(out), "--group-by", "race",
                           "--group-by", "gender")
    assert code == 0, err
    records = read_lines(out)
    data = load_dataset(faces).select(["race", "gender"], split="test", min_group_size=0)
    assert len(records) == len(data) == N // 3
    served = served_inputs(records, (3, 4, 4))
    assert np.array_equal(served.view(np.uint32), data.inputs.numpy().view(np.uint32))
    # The stored bytes are not what the model sees: scaled by 1/255 and normalised per channel.
    raw = np.load(faces)["inputs"][np.load(faces)["split"] == 1]
    mean, std = np.load(faces)["input_mean"], np.load(faces)["input_std"]
    assert np.allclose(served, (raw / 255.0 - mean[None, :, None, None]) / std[None, :, None, None], atol=1e-5)
    assert not np.allclose(served, raw / 255.0, atol=0.1)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3)).eval()
    evaluation = evaluate(model, data, keep_logits=True)
    with torch.no_grad():  # as the sandboxed worker answers Predict (sandbox/operations.py _serve)
        predicted = torch.softmax(model(torch.from_numpy(served)).float(), dim=1).argmax(dim=1)
    assert torch.equal(predicted, evaluation.logits.argmax(dim=1))
    assert torch.equal(predicted == data.labels, evaluation.correct)
    assert [r["label"] for r in records] == data.labels.tolist()
    assert ["&".join((r["groups"]["race"], r["groups"]["gender"])) for r in records] == [
        data.group_names[g] for g in data.groups.tolist()]


def test_float16_inputs_and_no_statistics_read_back_exactly(tmp_path, capsys):
    path, out = tmp_path / "half.npz", tmp_path / "traffic.jsonl"
    values = np.random.default_rng(1).normal(scale=1e4, size=(N, 5)).astype(np.float16)
    np.savez(path, **arrays(inputs=values, input_mean=None, input_std=None))
    code, _, err = traffic(capsys, "--dataset", str(path), "--out", str(out), "--split", "val")
    assert code == 0, err
    expected = load_dataset(path).select(["race"], split="val", min_group_size=0).inputs.numpy()
    assert np.array_equal(served_inputs(read_lines(out), (5,)).view(np.uint32), expected.view(np.uint32))


def test_values_are_shortest_decimals_that_read_back_as_the_same_float32():
    row = np.array([0.1, -0.0, 1e-45, 3.4028235e38, -1.1754944e-38, 16777216.0, 1 / 3], dtype=np.float32)
    text = traffic_module._numbers(np, row)
    assert text.split(", ")[:3] == ["0.1", "-0.0", "1e-45"]
    back = np.array(json.loads(f"[{text}]"), dtype=np.float64).astype(np.float32)
    assert np.array_equal(back.view(np.uint32), row.view(np.uint32))
    assert np.array_equal(np.array(to_instance({"values": json.loads(f"[{text}]")}).values, dtype=np.float32)
                          .view(np.uint32), row.view(np.uint32))


def test_group_by_split_limit_shuffle_and_json(faces, tmp_path, capsys):
    out = tmp_path / "traffic.jsonl"
    code, _, err = traffic(capsys, "--dataset", str(faces), "--out", str(out), "--split", "val", "--group-by", "gender")
    assert code == 0, err
    everything = read_lines(out)
    val_rows = [i for i in range(N) if i % 3 == 2]
    assert [r["groups"] for r in everything] == [{"gender": GENDERS[(i // 3) % 2]} for i in val_rows]
    assert [r["label"] for r in everything] == [i % 3 for i in val_rows]

    code, _, _ = traffic(capsys, "--dataset", str(faces), "--out", str(out), "--split", "val", "--limit", "5")
    assert code == 0 and [r["values"] for r in read_lines(out)] == [r["values"] for r in everything[:5]]
    assert set(read_lines(out)[0]["groups"]) == {"race", "gender"}

    def shuffled(seed: str) -> list[dict]:
        code, stdout, err = traffic(capsys, "--json", "--dataset", str(faces), "--out", str(out), "--split", "val",
                                    "--group-by", "gender", "--shuffle", "--seed", seed, "--limit", "7")
        assert code == 0, err
        assert json.loads(stdout) == {"instances": 7, "out": str(out), "dataset": str(faces), "split": "val",
                                      "group_by": ["gender"]}
        return read_lines(out)

    first = shuffled("3")
    assert first == shuffled("3") and first != shuffled("4") and first != everything[:7]
    assert all(r in everything for r in first)
    code, stdout, err = traffic(capsys, "--dataset", str(faces), "--out", str(out), "--limit", "1000")
    assert code == 0 and stdout == f"wrote {N // 3} instances to {out}\n"  # default split: test


def test_a_dataset_without_splits_gives_every_row(tmp_path, capsys):
    path, out = tmp_path / "nosplit.npz", tmp_path / "traffic.jsonl"
    np.savez(path, **arrays(split=None, split__names=None))
    code, stdout, err = traffic(capsys, "--json", "--dataset", str(path), "--out", str(out))
    assert code == 0, err
    assert json.loads(stdout)["instances"] == N and json.loads(stdout)["split"] is None
    code, _, err = traffic(capsys, "--dataset", str(path), "--out", str(out), "--split", "test")
    assert code == 2 and err.startswith("error: split: the dataset has no split array")


def _write(path: Path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif callable(content):
        content(path)
    else:
        np.savez(path, **content)


def _with_text_member(path: Path) -> None:
    np.savez(path, **arrays())
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("notes.txt", "hello")


def _truncated(path: Path) -> None:
    np.savez(path, **arrays())
    path.write_bytes(path.read_bytes()[:300])


HOSTILE = {
    "not a zip": (b"hello, not a dataset\n" * 20, "dataset", "not a readable .npz (zip) archive"),
    "pickle": (pickle.dumps({"inputs": [1, 2, 3]}), "dataset", "not a readable .npz (zip) archive"),
    "object array": (arrays(labels=np.array([{"x": 1}] * N, dtype=object)), "dataset", "never pickled objects"),
    "truncated zip": (_truncated, "dataset", "not a readable .npz (zip) archive"),
    "text member": (_with_text_member, "dataset", "notes.txt: archive member is not a .npy array"),
    "missing labels": (arrays(labels=None, label_names=None), "dataset", "labels: missing"),
    "missing names": (arrays(attr__race__names=None), "dataset", "attr__race__names: missing"),
    "names without codes": (arrays(attr__race=None), "dataset", "attr__race: missing"),
    "no attribute": (arrays(attr__race=None, attr__race__names=None, attr__gender=None, attr__gender__names=None),
                     "dataset", "attributes: no group attribute"),
    "unknown array": (arrays(attr_race=np.zeros(N)), "dataset", "attr_race: unknown array"),
    "code out of range": (arrays(attr__gender=np.full(N, 2)), "dataset", "attr__gender: 60 values fall outside 0..1"),
    "negative label": (arrays(labels=np.full(N, -1)), "dataset", "labels: labels are class indices and cannot be negative"),
    "label past label_names": (arrays(labels=np.full(N, 3)), "dataset",
                               "labels: 60 values fall outside 0..2 (the 3 classes in label_names)"),
    "split code out of range": (arrays(split=np.full(N, 3)), "dataset", "split: 60 values fall outside 0..2"),
    "short labels": (arrays(labels=np.zeros(N - 1, dtype=np.int64)), "dataset", "labels: must have shape (60,)"),
    "float64 inputs": (arrays(inputs=np.zeros((N, 4))), "dataset", "inputs: dtype must be float32, float16 or uint8"),
    "flat inputs": (arrays(inputs=np.zeros(N, dtype=np.float32)), "dataset", "inputs: must have shape (N, ...)"),
    "float labels": (arrays(labels=np.zeros(N)), "dataset", "labels: must hold integers"),
    "names not unicode": (arrays(attr__race__names=np.array([1, 2, 3])), "dataset", "attr__race__names: must be"),
    "std zero": (arrays(input_std=np.zeros(3)), "dataset", "input_std: every channel's std must be > 0"),
    "mean alone": (arrays(input_std=None), "dataset", "input_std: missing: input_mean is given"),
    "mean per pixel": (arrays(input_mean=np.zeros((3, 4))), "dataset", "input_mean: must be a float array of shape (3,)"),
    "nan inputs": (arrays(inputs=np.full((N, 2), np.nan, dtype=np.float32), input_mean=None, input_std=None),
                   "dataset", "NaN or infinite"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_files_are_usage_errors_naming_the_problem(case, tmp_path, capsys):
    content, field, problem = HOSTILE[case]
    path, out = tmp_path / "hostile.npz", tmp_path / "traffic.jsonl"
    _write(path, content)
    code, stdout, err = traffic(capsys, "--dataset", str(path), "--out", str(out))
    assert code == 2, (stdout, err)
    assert err.startswith(f"error: {field}: ") and problem in err, err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("flags, field, problem", [
    (["--split", "holdout"], "split", "unknown split 'holdout'; the dataset's splits: train, test, val"),
    (["--group-by", "age"], "group_by", "unknown attribute 'age'; the dataset's attributes: race, gender"),
    (["--group-by", "race", "--group-by", "race"], "group_by", "'race' is given twice"),
    (["--limit", "0"], "limit", "must be at least 1, got 0"),
    (["--seed", "3"], "seed", "only means something with --shuffle"),
])
def test_bad_flags_are_usage_errors_listing_the_choices(flags, field, problem, faces, tmp_path, capsys):
    out = tmp_path / "traffic.jsonl"
    code, _, err = traffic(capsys, "--dataset", str(faces), "--out", str(out), *flags)
    assert code == 2 and err == f"error: {field}: {problem}\n" and not out.exists()


def test_missing_files_and_unwritable_output(faces, tmp_path, capsys):
    code, _, err = traffic(capsys, "--dataset", str(tmp_path / "none.npz"), "--out", str(tmp_path / "t.jsonl"))
    assert code == 2 and err.startswith("error: dataset: no file ")
    code, _, err = traffic(capsys, "--dataset", "sample:faces", "--out", str(tmp_path / "t.jsonl"))
    assert code == 2 and err == "error: dataset: unknown sample 'faces'; samples: sample:digits\n"
    code, _, err = traffic(capsys, "--dataset", str(faces), "--out", str(tmp_path / "no" / "t.jsonl"))
    assert code == 2 and err.startswith("error: out: cannot write ")


HIDDEN_SCRIPT = textwrap.dedent('''
    import contextlib, importlib.abc, io, sys

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in set(sys.argv[1].split(",")):
                raise ImportError(f"{name} is hidden by the test")
            return None

    sys.meta_path.insert(0, Hide())
    from equiprune.client import cli
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = cli.main(["traffic", "--dataset", sys.argv[2], "--out", "traffic.jsonl"])
    print(code, errors.getvalue())
''')


@pytest.mark.parametrize("hidden, dataset, problem", [
    ("numpy,torch", "faces.npz", "error: dataset: reading a dataset needs the engine: pip install "
                                 "'equiprune[server]'"),
    ("torch", "sample:digits", "error: dataset: reading a dataset needs the engine: pip install 'equiprune[server]'"),
])
def test_what_is_missing_is_said(hidden, dataset, problem, faces, tmp_path):
    done = subprocess.run([sys.executable, "-c", HIDDEN_SCRIPT, hidden, dataset], cwd=faces.parent, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"2 {problem}"), done.stdout
    assert not (faces.parent / "traffic.jsonl").exists()


def test_predict_and_outcomes_read_the_file(run, server, faces, tmp_path):
    """The lines go through `equiprune predict` and `outcomes --from` as they are."""
    instances, predictions = tmp_path / "traffic.jsonl", tmp_path / "predictions.jsonl"
    model = server.artifacts.store(1, b"weights" * 10, "pruned.safetensors", "upload").artifact_id
    assert run("traffic", "--dataset", str(faces), "--out", str(instances), "--limit", "4")[0] == 0
    assert run("deploy", "faces", "--model", model, "--group-by", "race", "--reference", "White=0.9",
               "--reference", "Black=0.9", "--reference", "Asian=0.9", "--input-shape", "3,4,4")[0] == 0
    code, _, err = run("predict", "faces", "--instances", str(instances), "--out", str(predictions))
    assert code == 0, err
    assert [p["label"] for p in read_lines(predictions)] == [r["label"] for r in read_lines(instances)]
    code, stdout, err = run("outcomes", "--from", str(predictions))
    assert code == 0 and stdout.startswith("4 outcomes"), err
