import hashlib
import io
import json

import numpy as np
import pytest
import scipy.sparse as sp

from harrison_knn.index import IndexFormatError, TagIndex
from harrison_knn.metric import LabelProjection
from harrison_knn.suggester import TagSuggester
from harrison_knn.voting import neighbour_weights, vote


def unit_rows(n, d, seed=0):
    vectors = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_fit_solves_the_ridge_normal_equations():
    embeddings = unit_rows(12, 4)
    labels = sp.csr_matrix(np.eye(12, 3, dtype=np.float32) + np.eye(12, 3, k=-3))

    projection = LabelProjection.fit(embeddings, labels, mix=0.5, ridge=0.5)

    x = embeddings.astype(np.float64)
    expected = np.linalg.solve(x.T @ x + 0.5 * np.eye(4), x.T @ labels.toarray())
    np.testing.assert_allclose(projection.weights, expected, rtol=1e-5, atol=1e-6)
    assert projection.weights.shape == (4, 3)
    assert (projection.input_width, projection.output_width) == (4, 7)


def test_transform_joins_the_predicted_hashtags_and_the_embedding():
    # W maps the embedding (0.6, 0.8) to hashtag scores (3, 4): unit (0.6, 0.8).
    projection = LabelProjection(np.array([[5.0, 0.0], [0.0, 5.0]]), mix=0.36)

    searched = projection.transform(np.array([[0.6, 0.8]], dtype=np.float32))

    # sqrt(1 - 0.36) = 0.8 for the predicted part, sqrt(0.36) = 0.6 for the
    # embedding.
    np.testing.assert_allclose(searched, [[0.48, 0.64, 0.36, 0.48]], rtol=1e-6)
    assert searched.dtype == np.float32


def test_inner_products_mix_the_two_cosines():
    embeddings = unit_rows(30, 6)
    labels = sp.csr_matrix(
        (np.random.default_rng(2).random((30, 5)) < 0.4).astype(np.float32)
    )
    projection = LabelProjection.fit(embeddings, labels, mix=0.3)
    a, b = embeddings[:1], embeddings[1:2]

    product = (projection.transform(a) @ projection.transform(b).T).item()

    predicted_a, predicted_b = a @ projection.weights, b @ projection.weights
    cosine = (predicted_a @ predicted_b.T).item() / (
        np.linalg.norm(predicted_a) * np.linalg.norm(predicted_b)
    )
    expected = 0.7 * cosine + 0.3 * (a @ b.T).item()
    assert product == pytest.approx(expected, abs=1e-5)


def test_a_row_predicted_as_all_zero_keeps_unit_length():
    projection = LabelProjection(np.zeros((3, 2)), mix=0.5)

    searched = projection.transform(np.array([[0.0, 1.0, 0.0]], dtype=np.float32))

    np.testing.assert_allclose(searched, [[0.0, 0.0, 0.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    ("weights", "mix", "message"),
    [
        (np.zeros((3,)), 0.5, r"non-empty \(width, tags\) array, got shape \(3,\)"),
        (np.full((2, 2), np.nan), 0.5, "NaN or infinite"),
        (np.zeros((2, 2)), 0.0, r"mix must lie in \(0, 1\], got 0.0"),
        (np.zeros((2, 2)), 1.5, r"mix must lie in \(0, 1\], got 1.5"),
    ],
)
def test_bad_projection_values_are_refused(weights, mix, message):
    with pytest.raises(ValueError, match=message):
        LabelProjection(weights, mix)


def test_fit_refuses_labels_for_other_photos():
    with pytest.raises(ValueError, match="3 label rows for 4 embeddings"):
        LabelProjection.fit(unit_rows(4, 2), sp.csr_matrix((3, 2)), mix=0.5)


def test_transform_refuses_another_width():
    projection = LabelProjection(np.zeros((3, 2)), mix=0.5)

    with pytest.raises(ValueError, match=r"shape \(n, 3\), got \(1, 4\)"):
        projection.transform(unit_rows(1, 4))


def projected_index(n=40, d=6, tags=5, seed=0):
    embeddings = unit_rows(n, d, seed)
    labels = sp.csr_matrix(
        (np.random.default_rng(seed + 1).random((n, tags)) < 0.3).astype(np.float32)
    )
    projection = LabelProjection.fit(embeddings, labels, mix=0.5)
    index = TagIndex.from_embeddings(
        embeddings,
        labels,
        vocabulary=[f"tag{t}" for t in range(tags)],
        paths=[f"{i}.jpg" for i in range(n)],
        encoder="test-encoder",
        projection=projection,
    )
    return index, embeddings, projection


def test_an_index_with_a_projection_searches_the_projected_vectors():
    index, embeddings, projection = projected_index()
    queries = unit_rows(3, 6, seed=9)

    similarities, ids = index.search(queries, 4)

    # The index takes embeddings of the encoder's width and maps them itself.
    assert index.width == 6
    assert index.vectors.d == 11
    expected = projection.transform(queries) @ projection.transform(embeddings).T
    np.testing.assert_array_equal(ids, np.argsort(-expected, axis=1)[:, :4])
    np.testing.assert_allclose(
        similarities, np.sort(expected, axis=1)[:, ::-1][:, :4], atol=1e-5
    )


def test_an_index_with_a_projection_round_trips(tmp_path):
    index, _, projection = projected_index()
    queries = unit_rows(3, 6, seed=9)

    index.save(tmp_path)
    loaded = TagIndex.load(tmp_path, encoder="test-encoder", width=6)

    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert metadata["width"] == 6
    assert metadata["files"]["projection"]["name"].startswith("projection-")
    np.testing.assert_array_equal(loaded.projection.weights, projection.weights)
    assert loaded.projection.mix == 0.5
    np.testing.assert_array_equal(
        loaded.search(queries, 5)[1], index.search(queries, 5)[1]
    )


def test_a_damaged_projection_file_is_refused_by_its_checksum(tmp_path):
    projected_index()[0].save(tmp_path)
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    path = tmp_path / metadata["files"]["projection"]["name"]
    path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(IndexFormatError, match=f"{path} is damaged"):
        TagIndex.load(tmp_path)


def test_a_projection_of_another_width_is_refused(tmp_path):
    index, _, _ = projected_index()
    index.save(tmp_path)
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    metadata["width"] = 7
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))

    with pytest.raises(IndexFormatError, match="maps embeddings of width 6"):
        TagIndex.load(tmp_path)


def test_saving_without_a_projection_removes_the_old_projection_file(tmp_path):
    index, embeddings, _ = projected_index()
    index.save(tmp_path)
    plain = TagIndex.from_embeddings(
        embeddings,
        index.labels,
        vocabulary=index.vocabulary,
        paths=index.paths,
        encoder="test-encoder",
    )

    plain.save(tmp_path)

    assert list(tmp_path.glob("projection-*.npz")) == []
    assert TagIndex.load(tmp_path).projection is None


def test_neighbour_gram_holds_the_stored_rows_inner_products():
    index, embeddings, projection = projected_index()
    ids = np.array([[3, 0, -1], [5, 5, 7]])

    gram = index.neighbour_gram(ids)

    stored = projection.transform(embeddings)
    assert gram.shape == (2, 3, 3)
    assert gram[0, 0, 1] == pytest.approx(float(stored[3] @ stored[0]), abs=1e-6)
    assert gram[0, 0, 0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(gram[0, 2], 0.0)
    np.testing.assert_array_equal(gram[0, :, 2], 0.0)
    assert gram[1, 0, 1] == pytest.approx(1.0, abs=1e-5)


def test_reconstruct_refuses_a_row_outside_the_index():
    index, _, _ = projected_index()

    with pytest.raises(ValueError, match="row 40 is outside the index of 40 photos"):
        index.reconstruct(np.array([40]))


def test_suggester_votes_with_reconstruction_weights_from_the_index():
    index, embeddings, _ = projected_index()
    suggester = TagSuggester(index, k=6, weighting="reconstruction", ridge=2.0)

    scores, similarities, ids = suggester.score(embeddings[:2])
    answer = suggester.suggest_embeddings(embeddings[:2], top=3)

    weights = np.array([[n.weight for n in a.neighbours] for a in answer])
    gram = index.neighbour_gram(ids)
    expected = vote(
        similarities,
        ids,
        index.labels,
        weighting="reconstruction",
        ridge=2.0,
        gram=gram,
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    np.testing.assert_allclose(
        weights,
        neighbour_weights(
            similarities, weighting="reconstruction", ridge=2.0, gram=gram
        ),
        rtol=1e-6,
    )
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)


def test_suggester_refuses_a_ridge_that_is_not_positive():
    index, _, _ = projected_index()

    with pytest.raises(ValueError, match="ridge must be > 0, got -1.0"):
        TagSuggester(index, ridge=-1.0)


def npz_bytes(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


WEIGHTS = np.zeros((6, 5), dtype=np.float32)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            npz_bytes(weights=WEIGHTS, mix=np.array([0.5, 0.5])),
            "mix must be a single real number, got an array of shape (2,) and dtype",
        ),
        (
            npz_bytes(weights=WEIGHTS, mix=np.array(True)),
            "mix must be a single real number, got an array of shape () and dtype bool",
        ),
        (
            npz_bytes(weights=WEIGHTS + 1j, mix=np.float64(0.5)),
            "projection weights must be real numbers, got dtype complex64",
        ),
        (npy_bytes(WEIGHTS), "is a single array, not an .npz archive"),
        (b"", "is empty"),
    ],
    ids=["mix-array", "mix-bool", "complex-weights", "npy-file", "empty-file"],
)
def test_a_projection_file_of_the_wrong_kind_is_refused_naming_it(
    tmp_path, content, reason
):
    projected_index()[0].save(tmp_path)
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    path = tmp_path / metadata["files"]["projection"]["name"]
    path.write_bytes(content)
    metadata["files"]["projection"]["sha256"] = hashlib.sha256(content).hexdigest()
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))

    with pytest.raises(IndexFormatError) as raised:
        TagIndex.load(tmp_path)

    # Before, a mix array gave a TypeError, complex weights lost their imaginary
    # part with a warning, and a .npy or empty file raised TypeError or EOFError.
    assert str(raised.value).startswith(f"cannot read the index in {tmp_path}: ")
    assert reason in str(raised.value)


def test_fit_refuses_an_infinite_ridge_and_nan_embeddings():
    labels = sp.csr_matrix(np.eye(4, 2, dtype=np.float32))
    embeddings = unit_rows(4, 3)

    with pytest.raises(ValueError, match="^ridge must be a finite number, got inf$"):
        LabelProjection.fit(embeddings, labels, mix=0.5, ridge=np.inf)
    embeddings[2, 1] = np.nan
    with pytest.raises(ValueError, match="^embeddings hold NaN or infinite values$"):
        LabelProjection.fit(embeddings, labels, mix=0.5)


def test_an_index_gives_back_the_embeddings_it_was_built_from():
    index, embeddings, _ = projected_index()

    np.testing.assert_allclose(index.embeddings(np.arange(40)), embeddings, atol=1e-6)
    assert index.embeddings(np.array([2, 5])).shape == (2, 6)
