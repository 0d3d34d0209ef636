"""The artifact store on a local folder and on fsspec's memory filesystem (a stand-in for s3://)."""

import hashlib
import os
import re
import threading
import time
import uuid

import fsspec
import pytest

from equiprune.service.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from equiprune.service.artifacts.store import ArtifactRecord, ArtifactStore, CorruptArtifact

CHUNK = 4096


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _content(size: int, seed: int = 0) -> bytes:
    return bytes((seed + index * 7 + index // 251) % 256 for index in range(size))


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    # fsspec's memory filesystem is one per process: a unique root keeps tests apart.
    name = f"equiprune-test-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


@pytest.fixture
def imports(tmp_path):
    folder = tmp_path / "imports"
    folder.mkdir()
    return folder


@pytest.fixture
def open_store(root, tmp_path, imports):
    """Opens a store on the test's root; call it again to simulate a service restart."""

    def open_(**overrides):
        options = {
            "max_upload_bytes": 64 * 1024,
            "max_chunk_bytes": CHUNK,
            "import_roots": [str(imports)],
            "cache_dir": str(tmp_path / "cache"),
        }
        return ArtifactStore(root, **{**options, **overrides})

    return open_


@pytest.fixture
def store(open_store):
    return open_store()


def _upload(store, data, kind="model", name="weights.safetensors", sha=None, validate=None):
    upload = store.start_upload(kind, name, len(data), sha or _sha(data))
    for offset in range(0, len(data), CHUNK):
        store.put_chunk(upload.upload_id, offset, data[offset : offset + CHUNK])
    return store.finish_upload(upload.upload_id, validate=validate)


def _read_all(store, artifact_id, **options):
    return b"".join(store.read_chunks(artifact_id, **options))


# --- uploads ---------------------------------------------------------------------------------


def test_chunked_upload_round_trips_bytes_and_digest(store):
    data = _content(10_000)
    upload = store.start_upload("model", "weights.safetensors", len(data), _sha(data).upper())
    assert re.fullmatch(r"upl-[0-9a-f]{16}", upload.upload_id)
    assert upload.sha256 == _sha(data)  # upper case accepted and normalised

    committed = [store.put_chunk(upload.upload_id, o, data[o : o + CHUNK]) for o in range(0, len(data), CHUNK)]
    assert committed == [4096, 8192, 10_000]
    assert store.get_upload(upload.upload_id).committed_bytes == 10_000
    record = store.finish_upload(upload.upload_id)

    assert re.fullmatch(r"art-[0-9a-f]{16}", record.artifact_id)
    assert (record.kind, record.display_name, record.size_bytes, record.sha256, record.source) == (
        "model", "weights.safetensors", 10_000, _sha(data), "upload",
    )
    assert store.get(record.artifact_id) == record
    assert _read_all(store, record.artifact_id, chunk_bytes=777) == data
    assert [len(c) for c in store.read_chunks(record.artifact_id, chunk_bytes=4000)] == [4000, 4000, 2000]
    assert _read_all(store, record.artifact_id, offset=9_000) == data[9_000:]
    assert _read_all(store, record.artifact_id, offset=10_000) == b""
    with pytest.raises(NotFound) as caught:
        store.get_upload(upload.upload_id)
    assert caught.value.field == "upload_id"


def test_an_upload_resumes_after_a_restart(open_store):
    data = _content(9_000, seed=3)
    before = open_store()
    upload = before.start_upload("dataset", "data.npz", len(data), _sha(data))
    before.put_chunk(upload.upload_id, 0, data[:CHUNK])

    after = open_store()
    resumed = after.get_upload(upload.upload_id)
    assert resumed == upload.__class__(**{**upload.__dict__, "committed_bytes": CHUNK})
    after.put_chunk(upload.upload_id, CHUNK, data[CHUNK : 2 * CHUNK])
    after.put_chunk(upload.upload_id, 2 * CHUNK, data[2 * CHUNK :])
    record = after.finish_upload(upload.upload_id)

    later = open_store()
    assert later.get(record.artifact_id) == record
    assert later.list()[0] == [record]
    assert _read_all(later, record.artifact_id) == data


def test_a_retried_chunk_is_accepted_unchanged(store):
    data = _content(10_000)
    upload = store.start_upload("model", "m", len(data), _sha(data))
    store.put_chunk(upload.upload_id, 0, data[:CHUNK])
    store.put_chunk(upload.upload_id, CHUNK, data[CHUNK : 2 * CHUNK])

    assert store.put_chunk(upload.upload_id, 0, data[:CHUNK]) == 2 * CHUNK
    assert store.put_chunk(upload.upload_id, CHUNK, data[CHUNK : 2 * CHUNK]) == 2 * CHUNK
    assert store.put_chunk(upload.upload_id, 2 * CHUNK, data[2 * CHUNK :]) == 10_000
    assert _read_all(store, store.finish_upload(upload.upload_id).artifact_id) == data


def test_concurrent_retries_of_one_chunk_commit_it_once(store):
    data = _content(3 * CHUNK)
    upload = store.start_upload("model", "m", len(data), _sha(data))
    barrier = threading.Barrier(4)
    answers = []

    def send():
        barrier.wait()
        answers.append(store.put_chunk(upload.upload_id, 0, data[:CHUNK]))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert answers == [CHUNK] * 4
    assert store.get_upload(upload.upload_id).committed_bytes == CHUNK


@pytest.mark.parametrize(
    ("offset", "data", "error", "field"),
    [
        (0, b"x" * 100, FailedPrecondition, "offset"),  # other bytes at a committed offset
        (2 * CHUNK, b"x" * 100, FailedPrecondition, "offset"),  # a gap
        (100, b"x" * 100, FailedPrecondition, "offset"),  # inside committed bytes, different
        (-1, b"x", InvalidArgument, "offset"),
        (9_990, b"x" * 100, InvalidArgument, "offset"),  # past the announced size
        (CHUNK, b"", InvalidArgument, "data"),
        (CHUNK, b"x" * (CHUNK + 1), ResourceExhausted, "data"),
    ],
    ids=["rewrite", "gap", "inside-different", "negative", "past-size", "empty", "too-big"],
)
def test_bad_chunks_are_refused_naming_the_field(store, offset, data, error, field):
    content = _content(10_000)
    upload = store.start_upload("model", "m", len(content), _sha(content))
    store.put_chunk(upload.upload_id, 0, content[:CHUNK])

    with pytest.raises(error) as caught:
        store.put_chunk(upload.upload_id, offset, data)

    assert caught.value.field == field
    if error is FailedPrecondition:
        assert f"expected offset {CHUNK}" in caught.value.message
    assert store.get_upload(upload.upload_id).committed_bytes == CHUNK


def test_finishing_too_early_says_how_many_bytes_arrived(store):
    data = _content(10_000)
    upload = store.start_upload("model", "m", len(data), _sha(data))
    store.put_chunk(upload.upload_id, 0, data[:CHUNK])

    with pytest.raises(FailedPrecondition) as caught:
        store.finish_upload(upload.upload_id)

    assert caught.value.field == "upload_id"
    assert "4096 of 10000" in caught.value.message
    assert store.get_upload(upload.upload_id).committed_bytes == CHUNK  # still open


def test_a_digest_mismatch_discards_the_upload(store):
    data = _content(5_000)
    announced = _sha(b"something else")
    upload = store.start_upload("model", "m", len(data), announced)
    for offset in range(0, len(data), CHUNK):
        store.put_chunk(upload.upload_id, offset, data[offset : offset + CHUNK])

    with pytest.raises(InvalidArgument) as caught:
        store.finish_upload(upload.upload_id)

    assert caught.value.field == "sha256"
    assert announced in caught.value.message and _sha(data) in caught.value.message
    assert store.list() == ([], "")
    with pytest.raises(NotFound):
        store.put_chunk(upload.upload_id, 0, data[:CHUNK])


def test_a_validator_sees_a_local_copy_and_its_description_is_kept(store):
    data = _content(6_000)
    seen = {}

    def validate(path, kind):
        with open(path, "rb") as handle:
            seen["content"], seen["kind"] = handle.read(), kind
        return {"format": "safetensors", "architecture": "small_cnn"}

    record = _upload(store, data, validate=validate)

    assert seen == {"content": data, "kind": "model"}
    assert record.description == {"format": "safetensors", "architecture": "small_cnn"}
    assert store.get(record.artifact_id).description == record.description


def test_a_validator_refusal_propagates_and_deletes_the_session(store):
    data = _content(6_000)
    refusal = ValueError("model.architecture: not registered")
    upload = store.start_upload("model", "m", len(data), _sha(data))
    for offset in range(0, len(data), CHUNK):
        store.put_chunk(upload.upload_id, offset, data[offset : offset + CHUNK])

    def refuse(path, kind):
        raise refusal

    with pytest.raises(ValueError) as caught:
        store.finish_upload(upload.upload_id, validate=refuse)

    assert caught.value is refusal
    with pytest.raises(NotFound):
        store.get_upload(upload.upload_id)
    assert store.list() == ([], "")


@pytest.mark.parametrize(
    ("arguments", "error", "field"),
    [
        ({"kind": "weights"}, InvalidArgument, "kind"),
        ({"size_bytes": 0}, InvalidArgument, "size_bytes"),
        ({"size_bytes": 64 * 1024 + 1}, ResourceExhausted, "size_bytes"),
        ({"sha256": "abc"}, InvalidArgument, "sha256"),
        ({"sha256": "g" * 64}, InvalidArgument, "sha256"),
        ({"display_name": "a/b"}, InvalidArgument, "display_name"),
        ({"display_name": "a\x00b"}, InvalidArgument, "display_name"),
        ({"display_name": "n" * 257}, InvalidArgument, "display_name"),
    ],
)
def test_start_upload_refuses_bad_arguments(store, arguments, error, field):
    valid = {"kind": "model", "display_name": "m", "size_bytes": 10, "sha256": "a" * 64}
    with pytest.raises(error) as caught:
        store.start_upload(**{**valid, **arguments})
    assert caught.value.field == field
    if error is ResourceExhausted:
        assert str(64 * 1024) in caught.value.message


@pytest.mark.parametrize(
    "bad_id", ["../../etc/passwd", "art-../x", "art-0123456789ABCDEF", "art-123", "", "upl-0123456789abcdef"]
)
def test_malformed_artifact_ids_are_invalid_argument(store, bad_id):
    for call in (store.get, store.local_path, store.read_chunks):
        with pytest.raises(InvalidArgument) as caught:
            call(bad_id)
        assert caught.value.field == "artifact_id"


@pytest.mark.parametrize("bad_id", ["../uploads", "upl-0123456789abcdef/../x", "art-0123456789abcdef"])
def test_malformed_upload_ids_are_invalid_argument(store, bad_id):
    for call in (store.get_upload, store.finish_upload, lambda i: store.put_chunk(i, 0, b"x")):
        with pytest.raises(InvalidArgument) as caught:
            call(bad_id)
        assert caught.value.field == "upload_id"


def test_well_formed_unknown_ids_are_not_found(store):
    with pytest.raises(NotFound) as caught:
        store.get("art-0123456789abcdef")
    assert caught.value.field == "artifact_id"
    with pytest.raises(NotFound) as caught:
        store.put_chunk("upl-0123456789abcdef", 0, b"x")
    assert caught.value.field == "upload_id"


def test_read_offset_outside_the_content_is_invalid(store):
    record = _upload(store, _content(100))
    for offset in (-1, 101):
        with pytest.raises(InvalidArgument) as caught:
            store.read_chunks(record.artifact_id, offset=offset)
        assert caught.value.field == "offset"


# --- imports -----------------------------------------------------------------------------------


def test_import_from_an_allowed_local_root(store, imports):
    data = _content(20_000, seed=5)
    (imports / "nested").mkdir()
    path = imports / "nested" / "digits.npz"
    path.write_bytes(data)

    by_path = store.import_uri("dataset", str(path), _sha(data))
    by_url = store.import_uri("dataset", path.as_uri(), _sha(data), display_name="digits")

    assert (by_path.display_name, by_path.source, by_path.size_bytes) == ("digits.npz", str(path), 20_000)
    assert (by_url.display_name, by_url.source) == ("digits", path.as_uri())
    assert _read_all(store, by_path.artifact_id) == data
    assert _read_all(store, by_url.artifact_id) == data
    assert path.read_bytes() == data  # the source is copied, not moved


def _refused_import(store, uri, data):
    with pytest.raises(FailedPrecondition) as caught:
        store.import_uri("dataset", uri, _sha(data))
    assert caught.value.field == "source.uri"
    assert "import_roots" in caught.value.message
    assert store.list() == ([], "")


def test_import_outside_the_roots_is_refused(store, imports, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    data = _content(100)
    (outside / "secret.npz").write_bytes(data)

    _refused_import(store, str(outside / "secret.npz"), data)
    _refused_import(store, f"{imports}/../outside/secret.npz", data)
    _refused_import(store, (outside / "secret.npz").as_uri(), data)


def test_import_through_a_symlink_pointing_outside_is_refused(store, imports, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    data = _content(100)
    (outside / "secret.npz").write_bytes(data)
    (imports / "link.npz").symlink_to(outside / "secret.npz")
    (imports / "linked_dir").symlink_to(outside, target_is_directory=True)

    _refused_import(store, str(imports / "link.npz"), data)
    _refused_import(store, str(imports / "linked_dir" / "secret.npz"), data)


def test_local_imports_are_refused_when_no_roots_are_set(open_store, imports):
    store = open_store(import_roots=())
    data = _content(100)
    (imports / "x.npz").write_bytes(data)
    with pytest.raises(FailedPrecondition, match="import_roots"):
        store.import_uri("dataset", str(imports / "x.npz"), _sha(data))


def _staged_files(store, root, tmp_path):
    folder = os.path.join(root, "staging") if store.is_local else tmp_path / "cache" / "staging"
    return os.listdir(folder) if os.path.isdir(folder) else []


def test_import_errors_name_their_field(store, root, tmp_path, imports):
    data = _content(100)
    (imports / "x.npz").write_bytes(data)
    (imports / "big.npz").write_bytes(b"\x01" * (64 * 1024 + 1))

    cases = [
        (lambda: store.import_uri("dataset", str(imports / "missing.npz"), _sha(data)), NotFound, "source.uri"),
        (lambda: store.import_uri("dataset", str(imports / "x.npz"), _sha(b"other")), InvalidArgument, "source.sha256"),
        (lambda: store.import_uri("dataset", str(imports / "x.npz"), "nothex"), InvalidArgument, "source.sha256"),
        (lambda: store.import_uri("dataset", str(imports / "big.npz"), _sha(b"")), ResourceExhausted, "source.uri"),
        (lambda: store.import_uri("dataset", str(imports), _sha(data)), InvalidArgument, "source.uri"),
        (lambda: store.import_uri("dataset", f"simplecache::{imports}/x.npz", _sha(data)), InvalidArgument,
         "source.uri"),
        (lambda: store.import_uri("dataset", "nosuchprotocol://x/y", _sha(data)), InvalidArgument, "source.uri"),
        (lambda: store.import_uri("weights", str(imports / "x.npz"), _sha(data)), InvalidArgument, "kind"),
    ]
    for call, error, field in cases:
        with pytest.raises(error) as caught:
            call()
        assert caught.value.field == field, caught.value
    assert store.list() == ([], "")
    assert _staged_files(store, root, tmp_path) == []  # refused copies are cleaned up


def test_import_from_an_fsspec_url_only_once_its_protocol_is_allowed(store, open_store):
    data = _content(3_000, seed=9)
    name = f"equiprune-source-{uuid.uuid4().hex}"
    memory = fsspec.filesystem("memory")
    memory.pipe_file(f"/{name}/model.pt2", data)
    try:
        with pytest.raises(FailedPrecondition) as caught:  # no remote protocol by default
            store.import_uri("model", f"memory://{name}/model.pt2", _sha(data))
        assert caught.value.field == "source.uri" and "import_protocols" in caught.value.message
        record = open_store(import_protocols=("memory",)).import_uri("model", f"memory://{name}/model.pt2", _sha(data))
    finally:
        memory.rm(f"/{name}", recursive=True)
    assert (record.display_name, record.source) == ("model.pt2", f"memory://{name}/model.pt2")
    assert _read_all(store, record.artifact_id) == data


def test_import_validator_refusal_propagates_and_stores_nothing(store, root, tmp_path, imports):
    data = _content(100)
    (imports / "x.npz").write_bytes(data)

    def refuse(path, kind):
        raise KeyError("labels")

    with pytest.raises(KeyError):
        store.import_uri("dataset", str(imports / "x.npz"), _sha(data), validate=refuse)
    assert store.list() == ([], "")
    assert _staged_files(store, root, tmp_path) == []


# --- files the service writes, listing, local copies ---------------------------------------------


def test_put_file_copies_a_service_file_in(store, tmp_path):
    path = tmp_path / "report.json"
    path.write_bytes(b'{"groups": []}')

    record = store.put_file(str(path), "report", "report.json", "job:job-0123456789abcdef", {"stage": "pruned"})

    assert (record.kind, record.source) == ("report", "job:job-0123456789abcdef")
    assert record.description == {"stage": "pruned"}
    assert record.sha256 == _sha(b'{"groups": []}')
    assert _read_all(store, record.artifact_id) == b'{"groups": []}'
    assert path.exists()
    assert ArtifactRecord.from_dict(record.to_dict()) == record


def test_list_pages_newest_first_and_filters_by_kind(store, tmp_path):
    made = []
    for index in range(7):
        path = tmp_path / f"file{index}"
        path.write_bytes(_content(10 + index, seed=index))
        made.append(store.put_file(str(path), ("model", "dataset", "report")[index % 3], f"file{index}", "test"))

    seen, token = [], ""
    while True:
        page, token = store.list(page_size=3, page_token=token)
        assert len(page) <= 3
        seen.extend(page)
        if not token:
            break

    assert seen == sorted(made, key=lambda r: (r.create_time, r.artifact_id), reverse=True)
    models, _ = store.list(kind="model")
    assert {r.artifact_id for r in models} == {r.artifact_id for r in made if r.kind == "model"} and len(models) == 3
    first_models, model_token = store.list(kind="model", page_size=2)
    assert len(first_models) == 2 and model_token
    with pytest.raises(InvalidArgument) as caught:
        store.list(kind="dataset", page_token=model_token)
    assert caught.value.field == "page_token"
    bad_arguments = [({"page_token": "garbage"}, "page_token"), ({"page_size": 0}, "page_size"), ({"kind": "x"}, "kind")]
    for arguments, field in bad_arguments:
        with pytest.raises(InvalidArgument) as caught:
            store.list(**arguments)
        assert caught.value.field == field


def test_a_half_written_artifact_is_not_listed(store, root):
    record = _upload(store, _content(100))
    fs, base = fsspec.core.url_to_fs(root)
    fs.makedirs(f"{base}/artifacts/art-00000000000000ff", exist_ok=True)
    fs.pipe_file(f"{base}/artifacts/art-00000000000000ff/content", b"partial")

    assert store.list()[0] == [record]
    with pytest.raises(NotFound):
        store.get("art-00000000000000ff")


def test_local_path_gives_the_content_as_a_local_file(store, root, tmp_path):
    data = _content(5_000, seed=2)
    record = _upload(store, data)

    path = store.local_path(record.artifact_id)

    assert os.path.isfile(path)
    with open(path, "rb") as handle:
        assert handle.read() == data
    if store.is_local:
        assert path.startswith(root)
    else:
        assert path.startswith(str(tmp_path / "cache"))


def test_a_memory_root_downloads_once_and_verifies(tmp_path):
    name = f"equiprune-test-{uuid.uuid4().hex}"
    root = f"memory://{name}"
    data = _content(5_000, seed=4)
    try:
        record = _upload(ArtifactStore(root, max_chunk_bytes=CHUNK, cache_dir=str(tmp_path / "a")), data)
        fresh = ArtifactStore(root, cache_dir=str(tmp_path / "b"))  # another replica: nothing cached yet

        path = fresh.local_path(record.artifact_id)
        assert path.startswith(str(tmp_path / "b"))
        with open(path, "rb") as handle:
            assert handle.read() == data
        assert fresh.local_path(record.artifact_id) == path

        fsspec.filesystem("memory").pipe_file(f"/{name}/artifacts/{record.artifact_id}/content", b"tampered")
        corrupt_view = ArtifactStore(root, cache_dir=str(tmp_path / "c"))
        with pytest.raises(CorruptArtifact):
            corrupt_view.local_path(record.artifact_id)
        assert not os.path.exists(os.path.join(tmp_path / "c", record.artifact_id, "content"))
    finally:
        fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


def test_find_returns_the_oldest_artifact_with_that_content(tmp_path):
    store = ArtifactStore(str(tmp_path / "root"))
    path = tmp_path / "x.bin"
    path.write_bytes(b"same bytes")
    first = store.put_file(str(path), "dataset", "x", source="test")
    store.put_file(str(path), "dataset", "x", source="test")
    digest = hashlib.sha256(b"same bytes").hexdigest()
    assert store.find("dataset", digest).artifact_id == first.artifact_id
    assert store.find("model", digest) is None
    assert store.find("dataset", "0" * 64) is None


def test_finishing_again_returns_the_same_artifact_even_after_a_restart(store, open_store):
    data = b"x" * 100
    upload = store.start_upload("model", "m", len(data), _sha(data))
    store.put_chunk(upload.upload_id, 0, data)
    first = store.finish_upload(upload.upload_id)
    assert store.finish_upload(upload.upload_id).artifact_id == first.artifact_id
    assert open_store().finish_upload(upload.upload_id).artifact_id == first.artifact_id
    assert len(store.list()[0]) == 1


def test_damaged_content_is_never_handed_out_and_the_scrub_finds_it(tmp_path, caplog):
    """Integrity on read: a flipped byte after the artifact was stored (and even after it was
    read once) is DATA_LOSS for a job, a deploy, the model server and a download alike."""
    from equiprune.service.artifacts import scrub
    from equiprune.service.errors import client_status

    store = ArtifactStore(str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"))
    source = tmp_path / "weights.bin"
    source.write_bytes(bytes(range(256)) * 64)
    good = store.put_file(str(source), "model", "good.bin", source="test").artifact_id
    other = tmp_path / "data.bin"
    other.write_bytes(bytes(range(255, -1, -1)) * 64)
    bad = store.put_file(str(other), "dataset", "bad.bin", source="test")
    path = store.local_path(bad.artifact_id)  # read once intact: remembered as verified
    content = bytearray(open(path, "rb").read())
    content[100] ^= 0xFF
    time.sleep(0.01)
    open(path, "wb").write(bytes(content))

    for read in (lambda: store.local_path(bad.artifact_id), lambda: store.read_chunks(bad.artifact_id)):
        with pytest.raises(CorruptArtifact) as caught:
            read()
        status = client_status(caught.value)
        assert status.code == "DATA_LOSS" and bad.artifact_id in status.message and status.field == "artifact_id"
    assert "DATA LOSS" in caplog.text and bad.sha256 in caplog.text  # the operator's log names the recorded hash
    assert store.local_path(good) and b"".join(store.read_chunks(good))  # the intact one is still served

    checked, damaged = scrub.scrub(store)
    assert (checked, damaged) == (2, [bad.artifact_id])


def test_upload_sessions_expire_and_their_bytes_go(tmp_path, monkeypatch):
    from equiprune.service.artifacts import uploads
    from equiprune.service.errors import NotFound

    store = ArtifactStore(str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"), upload_ttl_s=3600)
    data = b"x" * 1000
    old = store.start_upload("dataset", "old.npz", len(data), hashlib.sha256(data).hexdigest())
    store.put_chunk(old.upload_id, 0, data[:400])
    now = time.time()
    monkeypatch.setattr(uploads.time, "time", lambda: now + 3601)  # an hour and a second later
    fresh = store.start_upload("dataset", "new.npz", len(data), hashlib.sha256(data).hexdigest())  # sweeps
    assert not (tmp_path / "store" / "uploads" / old.upload_id).exists()  # its staged bytes are gone
    with pytest.raises(NotFound) as caught:
        store.put_chunk(old.upload_id, 400, data[400:])
    assert caught.value.field == "upload_id"
    assert [u.upload_id for u in store.expire_uploads()] == [fresh.upload_id]
    monkeypatch.setattr(uploads.time, "time", lambda: now + 7300)
    with pytest.raises(NotFound) as caught:  # found expired on any call, not only at the next start
        store.get_upload(fresh.upload_id)
    assert "expired" in caught.value.message and not (tmp_path / "store" / "uploads" / fresh.upload_id).exists()


def test_announced_sizes_must_fit_on_the_disk(tmp_path, monkeypatch):
    from collections import namedtuple

    from equiprune.service.artifacts import uploads
    from equiprune.service.errors import ResourceExhausted

    usage = namedtuple("usage", "total used free")  # a disk with 13,000 bytes free, 10,000 kept in reserve
    monkeypatch.setattr(uploads.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 13_000, 13_000))
    store = ArtifactStore(str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"), max_upload_bytes=2**50,
                          free_disk_reserve_bytes=10_000)  # leaves 3,000 bytes to give
    digest = "0" * 64
    store.start_upload("dataset", "a.npz", 2000, digest)
    with pytest.raises(ResourceExhausted) as caught:  # 2,000 still announced + 2,000 > what is left
        store.start_upload("dataset", "b.npz", 2000, digest)
    # Other tenants' sessions are in the sum: the refusal gives no counts of them.
    assert caught.value.field == "size_bytes" and "2000 more bytes" in caught.value.message
    assert "open upload(s)" not in caught.value.message
    store.start_upload("dataset", "c.npz", 500, digest)  # what does fit is still taken


def test_tenant_quotas_hold_under_concurrent_starts_and_uploads_are_per_tenant(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from equiprune.service.tenants.store import Quotas

    store = ArtifactStore(str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"))
    quotas = Quotas(max_upload_sessions=2, max_stored_bytes=10_000)
    sha = hashlib.sha256(b"abcd").hexdigest()

    def start(_):
        try:
            return store.start_upload("dataset", "x.bin", 4, sha, tenant="acme", quotas=quotas).upload_id
        except ResourceExhausted as refusal:
            return refusal.field

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(start, range(8)))
    assert sum(r.startswith("upl-") for r in results) == 2
    assert results.count("quotas.max_upload_sessions") == 6
    upload = next(r for r in results if r.startswith("upl-"))
    with pytest.raises(NotFound) as theirs:
        store.put_chunk(upload, 0, b"abcd", tenant="other")
    with pytest.raises(NotFound) as absent:
        store.put_chunk("upl-0123456789abcdef", 0, b"abcd", tenant="other")
    assert str(theirs.value).replace(upload, "upl-0123456789abcdef") == str(absent.value)
    with pytest.raises(ResourceExhausted) as caught:
        store.start_upload("dataset", "y.bin", 9_999, sha, tenant="acme", quotas=Quotas(max_stored_bytes=10_000))
    assert caught.value.field == "quotas.max_stored_bytes"
    # Another tenant is counted apart.
    assert store.start_upload("dataset", "z.bin", 4, sha, tenant="other", quotas=quotas).tenant == "other"


def test_concurrent_imports_cannot_pass_the_storage_quota_together(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from equiprune.service.artifacts.plane import ArtifactsPlane
    from equiprune.service.jobs.wire import ArtifactSource
    from equiprune.service.tenants.auth import Caller
    from equiprune.service.tenants.store import Quotas

    roots = tmp_path / "imports"
    roots.mkdir()
    store = ArtifactStore(str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"), import_roots=[str(roots)])
    plane = ArtifactsPlane(store, validate=None, samples_dir=tmp_path / "samples")
    caller = Caller("acme", quotas=Quotas(max_stored_bytes=1000))
    sources = []
    for i in range(8):
        content = bytes([i]) * 900
        (roots / f"{i}.bin").write_bytes(content)
        sources.append(ArtifactSource(uri=str(roots / f"{i}.bin"), sha256=hashlib.sha256(content).hexdigest()))

    def attempt(source):
        try:
            return plane.import_artifact(caller, "dataset", source).artifact_id
        except ResourceExhausted as refusal:
            return refusal.field

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, sources))
    assert sum(r.startswith("art-") for r in results) == 1, results
    assert store.stored_bytes("acme") == 900 and store.held_bytes("acme") == 900  # no reservation left behind


def test_an_import_and_an_upload_started_together_cannot_both_pass_the_quota(tmp_path):
    """One held_bytes for both: an import's reservation counts for an upload start, and an
    open upload's announced size for an import."""
    from equiprune.service.tenants.store import Quotas

    store = ArtifactStore(str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"))
    quotas = Quotas(max_stored_bytes=1000)
    with store.quota_reservation("acme", quotas) as reserve:
        reserve(900)
        with pytest.raises(ResourceExhausted) as caught:
            store.start_upload("dataset", "x.bin", 200, "0" * 64, tenant="acme", quotas=quotas)
        assert caught.value.field == "quotas.max_stored_bytes" and "holds 900 bytes" in str(caught.value)
    assert store.held_bytes("acme") == 0
    store.start_upload("dataset", "x.bin", 200, "0" * 64, tenant="acme", quotas=quotas)
    with store.quota_reservation("acme", quotas) as reserve, pytest.raises(ResourceExhausted):
        reserve(900)
