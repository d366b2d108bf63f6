"""Tests of harrison_knn.heads: heads fitted on an index and saved beside it."""

import numpy as np
import pytest
import scipy.sparse as sp

from harrison_knn.heads import fit_head, head_folder, load_head
from harrison_knn.index import IndexFormatError, TagIndex
from harrison_knn.metric import LabelProjection


def save_index(folder, n_tags=3, seed=0):
    """An index of 30 photos around ``n_tags`` orthogonal directions, one
    hashtag each, saved in ``folder``; returns its embeddings and hashtag ids."""
    rng = np.random.default_rng(seed)
    tag_ids = np.arange(30) % n_tags
    embeddings = np.eye(n_tags, 8)[tag_ids] + 0.2 * rng.standard_normal((30, 8))
    embeddings = (
        embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    ).astype(np.float32)
    labels = sp.csr_matrix(np.eye(n_tags, dtype=np.float32)[tag_ids])
    TagIndex.from_embeddings(
        embeddings,
        labels,
        vocabulary=[f"tag{t}" for t in range(n_tags)],
        paths=[f"{i}.jpg" for i in range(30)],
        encoder="test",
    ).save(folder)
    return embeddings, tag_ids


def test_a_saved_head_scores_like_the_fitted_one(tmp_path):
    embeddings, tag_ids = save_index(tmp_path / "index")

    fitted = fit_head(tmp_path / "index", "logistic", C=1.0, n_jobs=1)
    loaded = load_head(tmp_path / "index", "logistic")

    assert (tmp_path / "index" / "heads" / "logistic" / "coef.npy").is_file()
    np.testing.assert_array_equal(
        loaded.predict_scores(embeddings), fitted.predict_scores(embeddings)
    )
    assert (loaded.predict_scores(embeddings).argmax(axis=1) == tag_ids).all()


def test_a_head_of_an_index_with_a_projection_is_fitted_on_the_embeddings(tmp_path):
    embeddings, tag_ids = save_index(tmp_path / "plain")
    plain = TagIndex.load(tmp_path / "plain")
    TagIndex.from_embeddings(
        embeddings,
        plain.labels,
        vocabulary=plain.vocabulary,
        paths=plain.paths,
        encoder="test",
        projection=LabelProjection.fit(embeddings, plain.labels, mix=0.5),
    ).save(tmp_path / "projected")

    head = fit_head(tmp_path / "projected", "logistic", C=1.0, n_jobs=1)
    reference = fit_head(tmp_path / "plain", "logistic", C=1.0, n_jobs=1)

    # Before, the head was fitted on the stored vectors (3 predicted hashtags
    # and 8 embedding columns) and could not score an embedding of width 8.
    assert head.coef_.shape == (3, 8)
    np.testing.assert_allclose(
        head.predict_scores(embeddings),
        reference.predict_scores(embeddings),
        atol=1e-4,
    )
    assert (head.predict_scores(embeddings).argmax(axis=1) == tag_ids).all()


def test_fitting_again_replaces_the_saved_head(tmp_path):
    save_index(tmp_path / "index")
    fit_head(tmp_path / "index", "torch-linear", epochs=2, batch_size=8)

    fit_head(tmp_path / "index", "torch-linear", epochs=3, batch_size=8)

    assert load_head(tmp_path / "index", "torch-linear").epochs == 3
    assert sorted(p.name for p in (tmp_path / "index" / "heads").iterdir()) == [
        "torch-linear"
    ]


def test_an_unknown_head_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown head 'svm'; choose one of logistic"):
        head_folder("indexes/x", "svm")


def test_loading_a_head_never_fitted_says_how_to_fit_one(tmp_path):
    save_index(tmp_path / "index")

    with pytest.raises(FileNotFoundError, match="--save-heads"):
        load_head(tmp_path / "index", "logistic")


def test_a_head_of_an_older_build_is_refused(tmp_path):
    save_index(tmp_path / "index", n_tags=3)
    fit_head(tmp_path / "index", "logistic", C=1.0, n_jobs=1)
    save_index(tmp_path / "index", n_tags=4)

    with pytest.raises(IndexFormatError, match="scores 3 hashtags .* has 4 hashtags"):
        load_head(tmp_path / "index", "logistic")
