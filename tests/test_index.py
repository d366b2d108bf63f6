import json

import numpy as np
import pytest
import scipy.sparse as sp

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
