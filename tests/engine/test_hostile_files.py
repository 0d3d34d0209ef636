"""Hostile files against the engine's loaders: every payload is real (the control tests show
it runs when unpickled, and that the duplicate-entry trick fools a zipfile-based audit into
letting torch run it), and every loader refuses it — or, for sample inputs, never reads it —
without the marker ever appearing."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import pytest
import torch

from equiprune.engine.dataset import load_dataset
from equiprune.engine.errors import InvalidDatasetError, InvalidModelError
from equiprune.engine.models import ArchitectureSpec, build_model, load_model, save_exported
from equiprune.engine.models.pt2_check import audit_pt2_archive
from tests.hostile import payloads

SPEC = ArchitectureSpec("mlp", {"in_features": 12, "num_classes": 3, "hidden": [8]})


@pytest.fixture(scope="module")
def pt2() -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    save_exported(build_model(SPEC), torch.randn(2, 12), buffer, training=False, spec=SPEC)
    return buffer.getvalue()


@pytest.fixture()
def marker(tmp_path):
    path = tmp_path / "payload-ran"
    yield path
    assert not path.exists(), "a payload ran"


def test_the_payload_is_real(tmp_path) -> None:
    marker = tmp_path / "ran"
    pickle.loads(payloads.marker_pickle(str(marker)))
    assert marker.exists()


def test_the_duplicate_trick_is_real_against_a_zipfile_audit(pt2, tmp_path) -> None:
    # What the old audit did: read the entries through zipfile (the last copy of a name wins)
    # and check those. Layouts whose zipfile view looks benign are handed, raw, to torch's own
    # loader: some of them run the payload. That is the hole the new audit closes.
    ran = 0
    for index, (_, archive) in enumerate(payloads.pt2_duplicate_layouts(pt2, str(tmp_path / "m"))):
        marker = tmp_path / "m"
        with zipfile.ZipFile(io.BytesIO(archive)) as view:
            weights = next((view.read(n) for n in view.namelist() if n.endswith(payloads.WEIGHTS_CONFIG)), b"")
            program = next((view.read(n) for n in view.namelist() if n.endswith(payloads.PROGRAM)), b"")
        if b'"use_pickle": true' in weights or json.loads(program or b"{}").get("guards_code"):
            continue  # a zipfile-based audit would have refused this one
        try:
            torch.export.load(io.BytesIO(archive))
        except Exception:  # noqa: BLE001 - many layouts fail to load after the payload ran, or before
            pass
        if marker.exists():
            ran += 1
            marker.unlink()
    assert ran > 0, "no layout fooled a zipfile-based audit; the control is broken"


def test_every_duplicate_layout_is_refused(pt2, marker) -> None:
    layouts = list(payloads.pt2_duplicate_layouts(pt2, str(marker)))
    assert len(layouts) >= 30
    for description, archive in layouts:
        with pytest.raises(InvalidModelError) as info:
            load_model(archive)
        assert info.value.field == "model.exported_program", description
        assert not marker.exists(), description


@pytest.mark.parametrize("build", [payloads.pt2_pickled_weights, payloads.pt2_pickled_constants],
                         ids=["pickled weights", "pickled constants"])
def test_pickled_payloads_in_a_pt2_are_refused(pt2, marker, build) -> None:
    with pytest.raises(InvalidModelError, match="pickle"):
        load_model(build(pt2, str(marker)))


def test_pickled_sample_inputs_are_dropped_unread(pt2, marker) -> None:
    crafted = payloads.pt2_pickled_sample_inputs(pt2, str(marker))
    audited = audit_pt2_archive(crafted)
    assert audited.dropped_sample_inputs
    with zipfile.ZipFile(io.BytesIO(audited.archive)) as rebuilt:
        sample = [n for n in rebuilt.namelist() if n.endswith(payloads.SAMPLE_INPUTS)]
        assert [rebuilt.read(n) for n in sample] == [b""]
    assert load_model(crafted).example_input_shape == (1, 12)


def test_the_rebuilt_archive_is_what_torch_reads(pt2) -> None:
    audited = audit_pt2_archive(pt2)
    assert audited.archive != pt2
    # Auditing the rebuilt archive again changes nothing: it is canonical.
    assert audit_pt2_archive(audited.archive).archive == audited.archive


@pytest.mark.parametrize("build", [payloads.torch_save_named_pt2, payloads.pickle_named_safetensors],
                         ids=["torch.save named .pt2", "pickle named .safetensors"])
def test_pickles_under_model_names_are_refused(marker, build) -> None:
    with pytest.raises(InvalidModelError, match="never unpickles|not a safetensors"):
        load_model(build(str(marker)))


@pytest.mark.parametrize("build", [payloads.npz_object_array, payloads.npz_raw_pickle_member,
                                   lambda m: payloads.npz_raw_pickle_member(m, "payload.pkl")],
                         ids=["object array", "raw pickle member", "pickle member with another name"])
def test_pickles_in_a_dataset_are_refused(marker, build, tmp_path) -> None:
    path = tmp_path / "hostile.npz"
    path.write_bytes(build(str(marker)))
    with pytest.raises(InvalidDatasetError):
        load_dataset(path)


def test_an_enum_hook_hidden_by_json_escapes_is_refused(pt2, marker) -> None:
    # "__enum__" written as \u005f\u005fenum\u005f\u005f inside the JSON-in-JSON of a pytree
    # spec: a text search misses it; torch would import the module it names.
    root, entries = payloads.pt2_entries(pt2)
    program = json.loads(dict(entries)[payloads.PROGRAM])
    spec = program["graph_module"]["signature"]["input_specs"]
    hook = '{"__enum__": {"fqn": "this:Whatever", "name": "x"}}'.replace("__enum__", "\\u005f\\u005fenum\\u005f\\u005f")
    program["graph_module"]["module_call_graph"][0]["signature"]["in_spec"] = (
        '[1, {"type": "builtins.tuple", "context": "null", "children_spec": [' + hook + ']}]')
    crafted = payloads.write_zip([(f"{root}/{n}", json.dumps(program).encode() if n == payloads.PROGRAM else c)
                                  for n, c in entries])
    assert b"__enum__" not in crafted and spec is not None
    with pytest.raises(InvalidModelError, match="enum types"):
        load_model(crafted)
