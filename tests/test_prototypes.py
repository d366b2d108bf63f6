"""Tests of TagPrototypes: indexed photos pulled toward their hashtags."""

import hashlib
import io
import json

import numpy as np
import pytest
import scipy.sparse as sp

from harrison_knn.heads import fit_head
from harrison_knn.index import IndexFormatError, TagIndex
from harrison_knn.metric import LabelProjection, TagPrototypes, fit_search_space


def unit_rows(n, d, seed=0):
    vectors = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def random_labels(n, tags, seed=1, share=0.3):
    labels = np.random.default_rng(seed).random((n, tags)) < share
    return sp.csr_matrix(labels.astype(np.float32))


def test_fit_solves_the_ridge_normal_equations_on_unit_hashtag_rows():
    vectors = unit_rows(20, 4)
    labels = random_labels(20, 3)

    prototypes = TagPrototypes.fit(vectors, labels, pull=0.5, ridge=0.5)

    tags = labels.toarray().astype(np.float64)
    counts = tags.sum(axis=1, keepdims=True)
    tags = np.divide(tags, np.sqrt(counts), out=np.zeros_like(tags), where=counts > 0)
    expected = np.linalg.solve(tags.T @ tags + 0.5 * np.eye(3), tags.T @ vectors)
    np.testing.assert_allclose(prototypes.weights, expected, rtol=1e-5, atol=1e-6)
    assert (prototypes.tag_count, prototypes.width) == (3, 4)


def test_apply_moves_a_photo_partway_to_its_prototype():
    # Hashtag 0 maps to (3, 4), hashtag 1 to (0, 2): a photo with both has the
    # prototype unit((3, 6) / sqrt(2)) = (1, 2) / sqrt(5).
    prototypes = TagPrototypes(np.array([[3.0, 4.0], [0.0, 2.0]]), pull=0.25)
    labels = sp.csr_matrix(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)

    stored = prototypes.apply(vectors, labels)

    np.testing.assert_allclose(
        stored,
        [
            [0.75 + 0.25 * 0.6, 0.25 * 0.8],
            [0.25 / np.sqrt(5), 0.75 + 0.5 / np.sqrt(5)],
            # A photo without hashtags has no prototype and stays where it is.
            [0.6, 0.8],
        ],
        rtol=1e-6,
    )
    assert stored.dtype == np.float32


def test_inner_products_mix_the_two_cosines():
    vectors = unit_rows(30, 6)
    labels = random_labels(30, 5)
    prototypes = TagPrototypes.fit(vectors, labels, pull=0.6)
    query = unit_rows(1, 6, seed=7)

    product = (query @ prototypes.apply(vectors[:1], labels[:1]).T).item()

    own = prototypes.prototypes(labels[:1])
    expected = 0.4 * (query @ vectors[:1].T).item() + 0.6 * (query @ own.T).item()
    assert product == pytest.approx(expected, abs=1e-6)
    assert np.linalg.norm(own) == pytest.approx(1.0, abs=1e-6)


def test_remove_gives_back_the_vectors_apply_was_given():
    vectors = unit_rows(25, 5)
    dense = random_labels(25, 4).toarray()
    dense[3] = 0
    labels = sp.csr_matrix(dense)
    prototypes = TagPrototypes.fit(vectors, labels, pull=0.9)

    back = prototypes.remove(prototypes.apply(vectors, labels), labels)

    np.testing.assert_allclose(back, vectors, atol=1e-5)


@pytest.mark.parametrize(
    ("weights", "pull", "message"),
    [
        (np.zeros((3,)), 0.5, r"non-empty \(tags, width\) array, got shape \(3,\)"),
        (np.full((2, 2), np.inf), 0.5, "prototype weights hold NaN or infinite"),
        (np.zeros((2, 2)) + 1j, 0.5, "real numbers, got dtype complex128"),
        (np.zeros((2, 2)), 1.0, r"prototype_pull must lie in \[0, 0.99\], got 1.0"),
        (np.zeros((2, 2)), -0.1, r"prototype_pull must lie in \[0, 0.99\], got -0.1"),
        (np.zeros((2, 2)), np.nan, r"prototype_pull must lie in \[0, 0.99\], got nan"),
        (np.zeros((2, 2)), 0.0, "prototype_pull 0 stores photos as they are"),
        # At 1 - 1e-8 the pull rounded to 1 in float32 and left nothing of a
        # photo's own vector to take back out.
        (np.zeros((2, 2)), 0.995, r"prototype_pull must lie in \[0, 0.99\], got 0.995"),
        (np.zeros((2, 2)), "0.5", "^prototype_pull must be a number, got '0.5'$"),
        (np.zeros((2, 2)), True, "^prototype_pull must be a number, got True$"),
    ],
)
def test_bad_prototype_values_are_refused(weights, pull, message):
    with pytest.raises(ValueError, match=message):
        TagPrototypes(weights, pull)


def test_labels_of_another_vocabulary_are_refused():
    prototypes = TagPrototypes(np.ones((3, 2)), pull=0.5)

    with pytest.raises(ValueError, match="labels must have 3 hashtag columns, got 4"):
        prototypes.apply(unit_rows(2, 2), sp.csr_matrix((2, 4)))
    with pytest.raises(
        ValueError, match=r"^these prototypes pull vectors of width 2; "
    ):
        prototypes.apply(unit_rows(2, 3), sp.csr_matrix((2, 3)))
    # Before, a numpy IndexError about a boolean index.
    with pytest.raises(ValueError, match="^3 label rows for 2 vectors$"):
        prototypes.apply(unit_rows(2, 2), sp.csr_matrix((3, 3)))
    with pytest.raises(ValueError, match="^3 label rows for 2 vectors$"):
        prototypes.remove(unit_rows(2, 2), sp.csr_matrix((3, 3)))


def test_fit_search_space_fits_only_the_parts_a_space_uses():
    embeddings, labels = unit_rows(30, 6), random_labels(30, 5)

    assert fit_search_space(embeddings, labels) == (None, None)
    projection, prototypes = fit_search_space(embeddings, labels, mix=0.5, pull=0.75)

    assert isinstance(projection, LabelProjection)
    # The prototypes live in the searched space: 5 predicted hashtags + 6.
    assert (prototypes.tag_count, prototypes.width, prototypes.pull) == (5, 11, 0.75)
    with pytest.raises(ValueError, match=r"prototype_pull must lie in \[0, 0.99\]"):
        fit_search_space(embeddings, labels, pull=1.0)


def pulled_index(mix=1.0, pull=0.5, n=40, d=6, tags=5):
    embeddings, labels = unit_rows(n, d), random_labels(n, tags)
    projection, prototypes = fit_search_space(embeddings, labels, mix=mix, pull=pull)
    index = TagIndex.from_embeddings(
        embeddings,
        labels,
        vocabulary=[f"tag{t}" for t in range(tags)],
        paths=[f"{i}.jpg" for i in range(n)],
        encoder="test-encoder",
        projection=projection,
        prototypes=prototypes,
    )
    return index, embeddings, prototypes


def test_an_index_with_prototypes_searches_the_pulled_rows():
    index, embeddings, prototypes = pulled_index()
    queries = unit_rows(3, 6, seed=9)

    similarities, ids = index.search(queries, 4)

    expected = queries @ prototypes.apply(embeddings, index.labels).T
    np.testing.assert_array_equal(ids, np.argsort(-expected, axis=1)[:, :4])
    np.testing.assert_allclose(
        similarities, np.sort(expected, axis=1)[:, ::-1][:, :4], atol=1e-6
    )


@pytest.mark.parametrize("mix", [1.0, 0.5])
def test_an_index_with_prototypes_gives_back_its_embeddings(mix):
    index, embeddings, _ = pulled_index(mix=mix, pull=0.75)

    np.testing.assert_allclose(index.embeddings(np.arange(40)), embeddings, atol=1e-5)
    np.testing.assert_allclose(
        index.embeddings(np.array([7, 2])), embeddings[[7, 2]], atol=1e-5
    )


def test_an_index_with_prototypes_round_trips(tmp_path):
    index, _, prototypes = pulled_index(mix=0.5)
    queries = unit_rows(3, 6, seed=9)

    index.save(tmp_path)
    loaded = TagIndex.load(tmp_path, encoder="test-encoder", width=6)

    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert metadata["files"]["prototypes"]["name"].startswith("prototypes-")
    np.testing.assert_array_equal(loaded.prototypes.weights, prototypes.weights)
    assert loaded.prototypes.pull == 0.5
    for got, expected in zip(loaded.search(queries, 5), index.search(queries, 5)):
        np.testing.assert_array_equal(got, expected)


def test_saving_without_prototypes_removes_the_old_prototypes_file(tmp_path):
    index, embeddings, _ = pulled_index()
    index.save(tmp_path)
    plain = TagIndex.from_embeddings(
        embeddings,
        index.labels,
        vocabulary=index.vocabulary,
        paths=index.paths,
        encoder="test-encoder",
    )

    plain.save(tmp_path)

    assert list(tmp_path.glob("prototypes-*.npz")) == []
    assert TagIndex.load(tmp_path).prototypes is None


def settings_recording(pull):
    return {"voting": {"projection_mix": 1.0, "prototype_pull": pull}}


@pytest.mark.parametrize("entry", [None, "deleted"])
def test_an_index_whose_prototypes_file_is_not_listed_is_refused(tmp_path, entry):
    index, _, _ = pulled_index(pull=0.75)
    index.settings = settings_recording(0.75)
    index.save(tmp_path)
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    if entry is None:
        metadata["files"]["prototypes"] = None
    else:
        del metadata["files"]["prototypes"]
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))

    with pytest.raises(IndexFormatError) as raised:
        TagIndex.load(tmp_path)

    # Before, it loaded without prototypes and gave embeddings off by 0.98.
    assert str(raised.value) == (
        f"{tmp_path}/metadata.json records prototype_pull 0.75, but the index's "
        "prototypes file gives 0.0 (no such file is listed); rebuild the index "
        "with 'harrison-knn build'"
    )


def test_a_prototypes_file_of_another_pull_than_the_settings_is_refused(tmp_path):
    index, _, _ = pulled_index(pull=0.75)
    index.settings = settings_recording(0.3)
    index.save(tmp_path)

    with pytest.raises(IndexFormatError, match="records prototype_pull 0.3, but the "):
        TagIndex.load(tmp_path)
    index.settings = settings_recording(0.75)
    index.save(tmp_path)
    assert TagIndex.load(tmp_path).prototypes.pull == 0.75


def test_a_cut_prototypes_file_is_refused_as_not_an_archive(tmp_path):
    pulled_index()[0].save(tmp_path)
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    path = tmp_path / metadata["files"]["prototypes"]["name"]
    path.write_bytes(path.read_bytes()[:200])

    with pytest.raises(IndexFormatError) as raised:
        TagIndex.load(tmp_path, verify=False)

    # Before, zipfile.BadZipFile escaped.
    assert f"{path} is not a readable .npz archive" in str(raised.value)


def test_embeddings_refuse_a_boolean_mask():
    index, _, _ = pulled_index()

    # Before, the mask was read as the row ids 0 and 1.
    with pytest.raises(ValueError, match="^row ids must be whole numbers, got "):
        index.embeddings(np.ones(40, dtype=bool))


def test_prototypes_of_another_width_are_refused():
    index, _, _ = pulled_index()

    with pytest.raises(IndexFormatError) as raised:
        TagIndex(
            vectors=index.vectors,
            labels=index.labels,
            vocabulary=index.vocabulary,
            paths=index.paths,
            encoder="test-encoder",
            prototypes=TagPrototypes(np.ones((5, 7)), pull=0.5),
        )

    assert str(raised.value) == (
        "the prototypes map 5 hashtags to width 7, but the index holds 5 hashtags "
        "and width 6"
    )


def npz_bytes(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (npz_bytes(weights=np.ones((5, 6))), "lacks pull"),
        (npz_bytes(weights=np.ones((5, 6)), pull=np.float64(1.0)), "got 1.0"),
        (
            npz_bytes(weights=np.ones((5, 6)), pull=np.array([0.5])),
            "pull must be a single real number, got an array of shape (1,)",
        ),
        (
            npz_bytes(weights=np.array([["a"]]), pull=np.float64(0.5)),
            "prototype weights must be real numbers, got dtype <U1",
        ),
        (b"", "is empty"),
    ],
    ids=["no-pull", "pull-1", "pull-array", "string-weights", "empty-file"],
)
def test_a_prototypes_file_of_the_wrong_kind_is_refused_naming_it(
    tmp_path, content, reason
):
    pulled_index()[0].save(tmp_path)
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    path = tmp_path / metadata["files"]["prototypes"]["name"]
    path.write_bytes(content)
    metadata["files"]["prototypes"]["sha256"] = hashlib.sha256(content).hexdigest()
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))

    with pytest.raises(IndexFormatError) as raised:
        TagIndex.load(tmp_path)

    assert str(raised.value).startswith(f"cannot read the index in {tmp_path}: ")
    assert reason in str(raised.value)
    assert str(path) in str(raised.value)


def test_a_head_of_a_pulled_index_is_fitted_on_the_embeddings(tmp_path):
    index, embeddings, _ = pulled_index(pull=0.75)
    index.save(tmp_path / "pulled")
    TagIndex.from_embeddings(
        embeddings,
        index.labels,
        vocabulary=index.vocabulary,
        paths=index.paths,
        encoder="test-encoder",
    ).save(tmp_path / "plain")

    head = fit_head(tmp_path / "pulled", "logistic", C=1.0, n_jobs=1)
    reference = fit_head(tmp_path / "plain", "logistic", C=1.0, n_jobs=1)

    assert head.coef_.shape == (5, 6)
    np.testing.assert_allclose(
        head.predict_scores(embeddings),
        reference.predict_scores(embeddings),
        atol=1e-4,
    )
