import hashlib
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp

from harrison_knn import index as index_module
from harrison_knn.index import FORMAT_VERSION, IndexFormatError, TagIndex


def unit_rows(n, d, seed=0):
    vectors = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def small_index(n=6, d=8):
    labels = sp.csr_matrix(np.eye(n, 3, dtype=np.float32))
    return TagIndex.from_embeddings(
        unit_rows(n, d),
        labels,
        vocabulary=["sea", "dog", "sun"],
        paths=[f"photos/{i}.jpg" for i in range(n)],
        encoder="test-encoder",
        data_root="/data",
        settings={"voting": {"k": 3}},
    )


def test_save_and_load_round_trip(tmp_path):
    index = small_index()
    queries = unit_rows(4, 8, seed=1)

    index.save(tmp_path / "idx")
    loaded = TagIndex.load(tmp_path / "idx", encoder="test-encoder", width=8)

    assert loaded.paths == index.paths
    assert loaded.vocabulary == ["sea", "dog", "sun"]
    assert loaded.settings == {"voting": {"k": 3}}
    assert loaded.data_root == "/data"
    assert (loaded.labels != index.labels).nnz == 0
    np.testing.assert_array_equal(
        loaded.search(queries, 3)[1], index.search(queries, 3)[1]
    )


def test_metadata_is_readable_json(tmp_path):
    small_index().save(tmp_path)

    metadata = json.loads((tmp_path / "metadata.json").read_text())

    assert metadata["format_version"] == FORMAT_VERSION
    assert metadata["encoder"] == "test-encoder"
    assert metadata["width"] == 8
    assert metadata["photo_count"] == 6
    assert metadata["photos"][2] == "photos/2.jpg"
    assert metadata["built_at"].endswith("+00:00")


def test_search_finds_the_photo_itself_first():
    index = small_index()
    queries = unit_rows(6, 8)

    similarities, ids = index.search(queries, 2)

    np.testing.assert_array_equal(ids[:, 0], np.arange(6))
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-5)


def test_k_larger_than_the_index_leaves_empty_slots():
    similarities, ids = small_index(n=2).search(unit_rows(1, 8), 4)

    assert ids[0, 2:].tolist() == [-1, -1]
    assert np.isneginf(similarities[0, 2:]).all()


def test_another_encoder_is_refused(tmp_path):
    small_index().save(tmp_path)

    with pytest.raises(
        IndexFormatError, match="built with encoder 'test-encoder', not 'clip"
    ):
        TagIndex.load(tmp_path, encoder="clip:ViT-B-32/openai")


def test_another_width_is_refused(tmp_path):
    small_index().save(tmp_path)

    with pytest.raises(
        IndexFormatError, match="width 8, but the encoder gives width 512"
    ):
        TagIndex.load(tmp_path, width=512)


def test_saving_again_replaces_the_array_files(tmp_path):
    small_index(n=6).save(tmp_path)
    small_index(n=4).save(tmp_path)

    assert len(list(tmp_path.glob("vectors-*.faiss"))) == 1
    assert len(TagIndex.load(tmp_path)) == 4


def test_queries_of_the_wrong_width_are_refused():
    with pytest.raises(
        ValueError, match=r"queries must have shape \(n, 8\), got \(1, 5\)"
    ):
        small_index().search(np.ones((1, 5), dtype=np.float32), 1)


def test_embeddings_that_are_not_unit_rows_are_refused():
    with pytest.raises(ValueError, match="row 0 has length 2.0000"):
        TagIndex.from_embeddings(
            np.full((1, 4), 1.0, dtype=np.float32),
            np.ones((1, 1)),
            vocabulary=["sea"],
            paths=["a.jpg"],
            encoder="e",
        )


# Damaged, incomplete and foreign index folders.


class Tripwire:
    """Creates a folder when unpickled: proof that a loader ran pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def saved_index(directory):
    small_index().save(directory)
    return directory, json.loads((directory / "metadata.json").read_text())


def array_file(directory, role):
    metadata = json.loads((directory / "metadata.json").read_text())
    return directory / metadata["files"][role]["name"]


def rewrite_metadata(directory, change):
    metadata = json.loads((directory / "metadata.json").read_text())
    change(metadata)
    (directory / "metadata.json").write_text(json.dumps(metadata))


def replace_array_file(directory, role, content):
    """Put ``content`` in place of an array file, with a matching checksum."""
    path = array_file(directory, role)
    path.write_bytes(content)

    def record_checksum(metadata):
        metadata["files"][role]["sha256"] = hashlib.sha256(content).hexdigest()

    rewrite_metadata(directory, record_checksum)
    return path


@pytest.mark.parametrize("role", ["vectors", "labels"])
def test_truncated_array_file_is_refused_by_its_checksum(tmp_path, role):
    saved_index(tmp_path)
    path = array_file(tmp_path, role)
    path.write_bytes(path.read_bytes()[:-20])

    with pytest.raises(IndexFormatError) as caught:
        TagIndex.load(tmp_path)

    assert str(caught.value) == (
        f"{path} is damaged (its checksum does not match {tmp_path}/metadata.json); "
        "rebuild the index with 'harrison-knn build'"
    )


@pytest.mark.parametrize("role", ["vectors", "labels"])
def test_array_file_with_one_changed_byte_is_refused_by_its_checksum(tmp_path, role):
    saved_index(tmp_path)
    path = array_file(tmp_path, role)
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))

    with pytest.raises(IndexFormatError, match=f"{path} is damaged"):
        TagIndex.load(tmp_path)


def test_truncated_vectors_file_without_verification_is_refused_by_faiss(tmp_path):
    saved_index(tmp_path)
    path = array_file(tmp_path, "vectors")
    path.write_bytes(path.read_bytes()[:100])

    with pytest.raises(IndexFormatError, match=f"cannot read the index in {tmp_path}"):
        TagIndex.load(tmp_path, verify=False)


@pytest.mark.parametrize("role", ["vectors", "labels"])
def test_missing_array_file_is_refused_naming_it(tmp_path, role):
    saved_index(tmp_path)
    path = array_file(tmp_path, role)
    path.unlink()

    with pytest.raises(IndexFormatError) as caught:
        TagIndex.load(tmp_path)

    assert str(caught.value) == (
        f"{path} is missing; rebuild the index with 'harrison-knn build'"
    )


def test_missing_metadata_file_is_not_a_complete_index(tmp_path):
    saved_index(tmp_path)
    (tmp_path / "metadata.json").unlink()

    with pytest.raises(FileNotFoundError) as caught:
        TagIndex.load(tmp_path)

    assert str(caught.value) == (
        f"{tmp_path}/metadata.json is missing: {tmp_path} is not a complete index; "
        "rebuild it with 'harrison-knn build'"
    )


def test_missing_index_folder_says_how_to_build_one(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        TagIndex.load(tmp_path / "nothing")

    assert str(caught.value) == (
        f"no index at {tmp_path}/nothing: build one with "
        f"'harrison-knn build DATA_DIR --index {tmp_path}/nothing'"
    )


@pytest.mark.parametrize(
    "text", ['{"format_version": 1, "encoder": "test-', "", "\xff\xfe binary"]
)
def test_metadata_that_is_not_json_is_refused(tmp_path, text):
    saved_index(tmp_path)
    (tmp_path / "metadata.json").write_text(text, encoding="latin-1")

    with pytest.raises(
        IndexFormatError, match=f"^{tmp_path}/metadata.json is not valid JSON: "
    ):
        TagIndex.load(tmp_path)


def test_metadata_that_is_not_a_json_object_is_refused(tmp_path):
    saved_index(tmp_path)
    (tmp_path / "metadata.json").write_text("[1, 2]")

    with pytest.raises(IndexFormatError, match="metadata.json does not hold a JSON"):
        TagIndex.load(tmp_path)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_metadata_of_an_unknown_format_version_is_refused(tmp_path, version):
    saved_index(tmp_path)
    rewrite_metadata(tmp_path, lambda metadata: metadata.update(format_version=version))

    with pytest.raises(IndexFormatError) as caught:
        TagIndex.load(tmp_path)

    assert str(caught.value) == (
        f"{tmp_path}/metadata.json has index format version {version!r}; this "
        f"harrison-knn reads version {FORMAT_VERSION}. Rebuild the index with this "
        "version"
    )


@pytest.mark.parametrize(
    "entry", ["encoder", "width", "photo_count", "files", "vocabulary", "photos"]
)
def test_metadata_missing_an_entry_is_refused_naming_it(tmp_path, entry):
    saved_index(tmp_path)
    rewrite_metadata(tmp_path, lambda metadata: metadata.pop(entry))

    with pytest.raises(IndexFormatError) as caught:
        TagIndex.load(tmp_path)

    assert str(caught.value) == f"{tmp_path}/metadata.json lacks the entries {entry}"


@pytest.mark.parametrize(
    ("entry", "value", "expected"),
    [
        ("photos", "abcdef", "a list of strings, got str"),
        ("photos", [1, 2, 3, 4, 5, 6], "a list of strings, got list"),
        ("vocabulary", "abc", "a list of strings, got str"),
        ("width", "8", "a whole number, got str"),
        ("photo_count", True, "a whole number, got bool"),
        ("encoder", None, "a string, got NoneType"),
        ("files", [], "an object, got list"),
        ("settings", [1], "an object, got list"),
    ],
)
def test_metadata_entry_of_the_wrong_type_is_refused(tmp_path, entry, value, expected):
    saved_index(tmp_path)
    rewrite_metadata(tmp_path, lambda metadata: metadata.update({entry: value}))

    with pytest.raises(IndexFormatError) as caught:
        TagIndex.load(tmp_path)

    assert str(caught.value) == (
        f"{tmp_path}/metadata.json: the entry {entry!r} should be {expected}"
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda files: files.pop("labels"),
        lambda files: files["vectors"].pop("sha256"),
        lambda files: files["vectors"].update(name=None),
    ],
    ids=["no labels file", "no checksum", "name not a string"],
)
def test_metadata_with_an_incomplete_file_entry_is_refused(tmp_path, change):
    saved_index(tmp_path)
    rewrite_metadata(tmp_path, lambda metadata: change(metadata["files"]))

    with pytest.raises(IndexFormatError, match="the entry files.(vectors|labels) "):
        TagIndex.load(tmp_path)


def test_metadata_naming_a_file_outside_the_folder_is_refused(tmp_path):
    saved_index(tmp_path / "index")
    (tmp_path / "elsewhere.faiss").write_bytes(b"")
    rewrite_metadata(
        tmp_path / "index",
        lambda metadata: metadata["files"]["vectors"].update(name="../elsewhere.faiss"),
    )

    with pytest.raises(IndexFormatError, match="bad file name '../elsewhere.faiss'"):
        TagIndex.load(tmp_path / "index")


def test_metadata_counting_other_photos_than_the_vectors_hold_is_refused(tmp_path):
    saved_index(tmp_path)
    rewrite_metadata(tmp_path, lambda metadata: metadata.update(photo_count=7))

    with pytest.raises(IndexFormatError, match="holds 6 vectors of width 8, but"):
        TagIndex.load(tmp_path)


def test_metadata_listing_other_photos_than_the_vectors_hold_is_refused(tmp_path):
    saved_index(tmp_path)
    rewrite_metadata(tmp_path, lambda metadata: metadata["photos"].pop())

    with pytest.raises(IndexFormatError, match="5 photo paths for 6 indexed vectors"):
        TagIndex.load(tmp_path)


def test_labels_file_holding_a_pickled_object_is_refused_not_unpickled(tmp_path):
    saved_index(tmp_path / "index")
    marker = tmp_path / "unpickled"
    buffer = io.BytesIO()
    np.savez(
        buffer,
        indptr=np.arange(7, dtype=np.int64),
        indices=np.array([Tripwire(marker)] * 6, dtype=object),
        shape=np.array([6, 3], dtype=np.int64),
    )
    path = replace_array_file(tmp_path / "index", "labels", buffer.getvalue())

    with pytest.raises(IndexFormatError, match="Object arrays cannot be loaded"):
        TagIndex.load(tmp_path / "index")

    assert not marker.exists()
    # The payload is live: a loader that allowed pickles would have run it.
    np.load(path, allow_pickle=True)["indices"]
    assert marker.is_dir()


# Saving is atomic: an interrupted save leaves the old index or the new one.


def test_array_files_are_written_before_the_metadata_that_names_them(
    tmp_path, monkeypatch
):
    written = []
    original = index_module.write_atomically

    def record(path, content):
        written.append(path.name)
        original(path, content)

    monkeypatch.setattr(index_module, "write_atomically", record)

    small_index().save(tmp_path)

    metadata = json.loads((tmp_path / "metadata.json").read_text())
    vectors, labels = (
        metadata["files"][role]["name"] for role in ("vectors", "labels")
    )
    assert written == [vectors, labels, "metadata.json"]
    for role, name in [("vectors", vectors), ("labels", labels)]:
        digest = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        assert name == f"{role}-{digest[:16]}.{name.rsplit('.', 1)[1]}"
        assert metadata["files"][role]["sha256"] == digest


@pytest.mark.parametrize("completed_writes", [0, 1, 2])
def test_save_interrupted_before_the_metadata_leaves_the_old_index(
    tmp_path, monkeypatch, completed_writes
):
    small_index(n=6).save(tmp_path)
    original = index_module.write_atomically
    calls = []

    def write_then_die(path, content):
        if len(calls) == completed_writes:
            raise KeyboardInterrupt
        calls.append(path)
        original(path, content)

    monkeypatch.setattr(index_module, "write_atomically", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        small_index(n=4).save(tmp_path)

    loaded = TagIndex.load(tmp_path)
    assert len(loaded) == 6
    assert loaded.paths == [f"photos/{i}.jpg" for i in range(6)]
    np.testing.assert_array_equal(loaded.reconstruct(np.arange(6)), unit_rows(6, 8))


def test_save_interrupted_after_the_metadata_leaves_the_new_index(
    tmp_path, monkeypatch
):
    small_index(n=6).save(tmp_path)

    def die(directory, keep):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_module, "_remove_unreferenced", die)
    with pytest.raises(KeyboardInterrupt):
        small_index(n=4).save(tmp_path)
    monkeypatch.undo()

    assert len(TagIndex.load(tmp_path)) == 4
    assert len(list(tmp_path.glob("vectors-*.faiss"))) == 2
    small_index(n=4).save(tmp_path)
    assert len(list(tmp_path.glob("vectors-*.faiss"))) == 1


class CountingVectors:
    """A faiss index stand-in that records how many threads search it at once."""

    def __init__(self, vectors):
        self.inner = vectors
        self.d = vectors.d
        self.ntotal = vectors.ntotal
        self.searching = 0
        self.most_at_once = 0
        self.count_lock = threading.Lock()

    def search(self, queries, k):
        with self.count_lock:
            self.searching += 1
            self.most_at_once = max(self.most_at_once, self.searching)
        time.sleep(0.005)  # widens the window in which two searches could meet
        answer = self.inner.search(queries, k)
        with self.count_lock:
            self.searching -= 1
        return answer


def test_an_index_on_the_gpu_is_searched_by_one_thread_at_a_time():
    index = small_index()
    expected = index.search(unit_rows(2, 8, seed=3), 3)
    counting = CountingVectors(index.vectors)
    index.vectors = counting
    index._on_gpu = True  # faiss has no GPU here; the lock is what is tested

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda _: index.search(unit_rows(2, 8, seed=3), 3), range(16))
        )

    assert counting.most_at_once == 1
    for similarities, ids in answers:
        np.testing.assert_array_equal(ids, expected[1])
        np.testing.assert_array_equal(similarities, expected[0])


def test_empty_labels_file_is_refused_not_an_eof_error(tmp_path):
    saved_index(tmp_path)
    replace_array_file(tmp_path, "labels", b"")

    # Before, numpy's EOFError escaped the loader (and the command line).
    with pytest.raises(IndexFormatError) as raised:
        TagIndex.load(tmp_path)

    assert str(raised.value) == (
        f"cannot read the index in {tmp_path}: No data left in file"
    )
