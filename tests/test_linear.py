"""Tests of harrison_knn.linear: quality on separable data, rare hashtags, saving."""

import json

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import NotFittedError

from harrison_knn.linear import (
    FORMAT_VERSION,
    HeadFormatError,
    LogisticHead,
    TorchLinearHead,
    _sample_rows,
)
from harrison_knn.metrics import rank_tags


def clusters(per_tag: int, seed: int, width: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings around three orthogonal directions, one hashtag each.

    Returns:
        ``(3 * per_tag, width) float32`` embeddings and ``(3 * per_tag,)``
        hashtag ids 0, 1, 2.
    """
    rng = np.random.default_rng(seed)
    tag_ids = np.repeat(np.arange(3), per_tag)
    embeddings = np.eye(3, width)[tag_ids] + 0.2 * rng.standard_normal(
        (len(tag_ids), width)
    )
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings.astype(np.float32), tag_ids


def one_hot(tag_ids: np.ndarray, n_tags: int) -> sp.csr_matrix:
    rows = np.arange(len(tag_ids))
    values = np.ones(len(tag_ids), np.float32)
    return sp.csr_matrix((values, (rows, tag_ids)), shape=(len(tag_ids), n_tags))


TRAIN, TRAIN_TAGS = clusters(per_tag=30, seed=0)
HELD_OUT, HELD_OUT_TAGS = clusters(per_tag=20, seed=1)


def make_heads():
    return [
        LogisticHead(Cs=(0.1, 1.0, 10.0), n_jobs=1),
        TorchLinearHead(batch_size=16, min_steps=100),
    ]


@pytest.mark.parametrize("head", make_heads(), ids=["logistic", "torch"])
def test_heads_rank_the_right_hashtag_first_on_held_out_clusters(head):
    head.fit(TRAIN, one_hot(TRAIN_TAGS, 3))

    scores = head.predict_scores(HELD_OUT)

    assert scores.shape == (60, 3)
    assert scores.dtype == np.float32
    top, _ = rank_tags(scores, 1)
    assert (top[:, 0] == HELD_OUT_TAGS).mean() == 1.0
    probabilities = head.predict_proba(HELD_OUT)
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-scores)), rtol=1e-6)
    assert probabilities[np.arange(60), HELD_OUT_TAGS].mean() > 0.5


def test_logistic_head_chooses_c_on_validation_and_records_the_search():
    labels = one_hot(TRAIN_TAGS, 3)

    head = LogisticHead(Cs=(10.0, 0.001), n_jobs=1).fit(TRAIN, labels)

    # C=0.001 shrinks every weight to almost nothing: the ranking is lost.
    assert set(head.search_scores_) == {"0.001", "10.0"}
    assert head.search_scores_["10.0"] == 1.0
    assert head.search_scores_["0.001"] < 0.6
    assert head.C_ == 10.0

    # Both rank the validation photos perfectly: the tie keeps the smaller C.
    tied = LogisticHead(Cs=(10.0, 1.0), n_jobs=1).fit(TRAIN, labels)
    assert tied.search_scores_ == {"1.0": 1.0, "10.0": 1.0}
    assert tied.C_ == 1.0

    given = LogisticHead(C=2.0, n_jobs=1).fit(TRAIN, one_hot(TRAIN_TAGS, 3))
    assert given.C_ == 2.0
    assert given.search_scores_ == {}


def test_logistic_head_is_the_same_with_threads_and_dense_labels():
    labels = one_hot(TRAIN_TAGS, 3)
    one = LogisticHead(Cs=(0.1, 1.0), rows_per_tag=50, n_jobs=1).fit(TRAIN, labels)
    two = LogisticHead(Cs=(0.1, 1.0), rows_per_tag=50, n_jobs=2).fit(
        TRAIN, labels.toarray()
    )

    np.testing.assert_array_equal(one.coef_, two.coef_)
    np.testing.assert_array_equal(one.intercept_, two.intercept_)


def test_row_sampling_keeps_classes_and_weights_them_to_the_full_count():
    rng = np.random.default_rng(0)
    rare = np.arange(10)
    rows, targets, weights = _sample_rows(rare, 100, 40, rng)
    assert len(rows) == 40 and targets.sum() == 10
    assert set(weights[targets]) == {1.0} and set(weights[~targets]) == {3.0}
    assert np.all(np.diff(rows) > 0)

    frequent = np.arange(80)
    rows, targets, weights = _sample_rows(frequent, 100, 40, rng)
    assert targets.sum() == 20
    assert set(weights[targets]) == {4.0} and set(weights[~targets]) == {1.0}
    assert weights.sum() == 100.0

    rows, targets, weights = _sample_rows(rare, 100, None, rng)
    assert rows is None and weights is None and targets.sum() == 10


def rare_labels() -> sp.csr_matrix:
    """Six hashtags on the 90 training photos: 0-2 the clusters, 3 on no
    photo, 4 on photo 7 alone, 5 on every photo."""
    dense = one_hot(TRAIN_TAGS, 6).toarray()
    dense[7, 4] = 1
    dense[:, 5] = 1
    return sp.csr_matrix(dense)


@pytest.mark.parametrize(
    "head",
    [LogisticHead(n_jobs=1), TorchLinearHead(batch_size=16, min_steps=100)],
    ids=["logistic", "torch"],
)
def test_rare_hashtags_are_explicit(head):
    head.fit(TRAIN, rare_labels())

    scores = head.predict_scores(TRAIN)

    assert head.n_positives_.tolist() == [30, 30, 30, 0, 1, 90]
    assert (scores[:, 3] == -np.inf).all() and not head.coef_[3].any()
    assert (scores[:, 5] == np.inf).all() and not head.coef_[5].any()
    # One positive photo is enough to fit: that photo is among the three
    # training photos that score the hashtag highest.
    assert np.isfinite(scores[:, 4]).all()
    assert 7 in np.argsort(-scores[:, 4])[:3]

    head.set_params(min_positives=2).fit(TRAIN, rare_labels())
    assert (head.predict_scores(TRAIN)[:, 4] == -np.inf).all()


def test_torch_head_is_deterministic_for_a_seed():
    labels = one_hot(TRAIN_TAGS, 3)

    def fit(seed):
        head = TorchLinearHead(epochs=3, batch_size=16, min_steps=0, seed=seed)
        return head.fit(TRAIN, labels)

    first, second, other = fit(5), fit(5), fit(6)

    np.testing.assert_array_equal(first.coef_, second.coef_)
    np.testing.assert_array_equal(first.intercept_, second.intercept_)
    assert first.loss_history_ == second.loss_history_
    assert not np.array_equal(first.coef_, other.coef_)
    assert len(first.loss_history_) == 3
    assert first.loss_history_[-1] < first.loss_history_[0]


def test_torch_head_runs_at_least_min_steps():
    labels = one_hot(TRAIN_TAGS, 3)

    # 90 photos in batches of 40 make 3 steps an epoch: 10 steps need 4 epochs.
    head = TorchLinearHead(epochs=1, batch_size=40, min_steps=10).fit(TRAIN, labels)

    assert len(head.loss_history_) == 4


@pytest.mark.parametrize("head", make_heads(), ids=["logistic", "torch"])
def test_save_and_load_give_identical_scores(head, tmp_path):
    head.fit(TRAIN, rare_labels())

    head.save(tmp_path / "head")
    loaded = type(head).load(tmp_path / "head")

    np.testing.assert_array_equal(
        loaded.predict_scores(HELD_OUT), head.predict_scores(HELD_OUT)
    )
    assert loaded.get_params() == head.get_params()
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == [
        "coef.npy",
        "head.json",
        "intercept.npy",
        "n_positives.npy",
    ]


def test_loaded_logistic_head_keeps_the_search(tmp_path):
    head = LogisticHead(Cs=(0.5, 5.0), n_jobs=1).fit(TRAIN, one_hot(TRAIN_TAGS, 3))

    loaded = LogisticHead.load(head.save(tmp_path))
    assert loaded.C_ == head.C_
    assert loaded.search_scores_ == head.search_scores_
    assert loaded.Cs == (0.5, 5.0)


@pytest.fixture
def saved(tmp_path):
    head = LogisticHead(C=1.0, n_jobs=1).fit(TRAIN, one_hot(TRAIN_TAGS, 3))
    return head.save(tmp_path / "head")


def test_loading_another_format_version_raises(saved):
    metadata = json.loads((saved / "head.json").read_text())
    metadata["format_version"] = FORMAT_VERSION + 1
    (saved / "head.json").write_text(json.dumps(metadata))

    with pytest.raises(HeadFormatError, match="format_version 2; .* reads only 1"):
        LogisticHead.load(saved)


def test_loading_a_mismatched_array_raises_naming_it(saved):
    np.save(saved / "coef.npy", np.zeros((3, 7), np.float32))

    with pytest.raises(HeadFormatError, match=r"coef.npy holds .* \(3, 7\).*\(3, 8\)"):
        LogisticHead.load(saved)


def test_loading_a_corrupted_array_raises_naming_it(saved):
    (saved / "intercept.npy").write_bytes(b"\x93NUMPY garbage")

    with pytest.raises(HeadFormatError, match="intercept.npy is not a readable"):
        LogisticHead.load(saved)


def test_loading_refuses_pickled_arrays(saved):
    np.save(saved / "intercept.npy", np.array([None, 1, 2], object), allow_pickle=True)

    with pytest.raises(HeadFormatError, match="intercept.npy is not a readable"):
        LogisticHead.load(saved)


def test_loading_the_wrong_kind_or_a_missing_file_raises(saved):
    with pytest.raises(HeadFormatError, match="holds a LogisticHead, not a Torch"):
        TorchLinearHead.load(saved)

    (saved / "n_positives.npy").unlink()
    with pytest.raises(FileNotFoundError, match="n_positives.npy is missing"):
        LogisticHead.load(saved)
    with pytest.raises(FileNotFoundError, match="head.json is missing"):
        LogisticHead.load(saved / "nowhere")

    (saved / "head.json").write_text("{not json")
    with pytest.raises(HeadFormatError, match="not valid JSON"):
        LogisticHead.load(saved)


def test_bad_shapes_raise_naming_them():
    head = LogisticHead(C=1.0, n_jobs=1)
    with pytest.raises(NotFittedError):
        head.predict_scores(HELD_OUT)
    with pytest.raises(ValueError, match=r"labels have shape \(89, 3\).* 90 rows"):
        head.fit(TRAIN, one_hot(TRAIN_TAGS, 3)[:89])
    with pytest.raises(ValueError, match=r"non-empty \(n, d\) array, got shape \(8,\)"):
        head.fit(TRAIN[0], one_hot(TRAIN_TAGS, 3)[:1])

    head.fit(TRAIN, one_hot(TRAIN_TAGS, 3))
    with pytest.raises(ValueError, match=r"shape \(60, 5\).*width d=8"):
        head.predict_scores(HELD_OUT[:, :5])
    with pytest.raises(ValueError, match=r"only 0 and 1, found \[3.0\]"):
        head.fit(TRAIN, one_hot(TRAIN_TAGS, 3) * 3)


def test_bad_hyper_parameters_raise_on_fit():
    labels = one_hot(TRAIN_TAGS, 3)
    with pytest.raises(ValueError, match="C must be positive or None, got -1"):
        LogisticHead(C=-1).fit(TRAIN, labels)
    with pytest.raises(ValueError, match="validation_size must be between 0 and 1"):
        LogisticHead(validation_size=1.0).fit(TRAIN, labels)
    with pytest.raises(ValueError, match="n_jobs must be a non-zero integer"):
        LogisticHead(n_jobs=0).fit(TRAIN, labels)
    with pytest.raises(ValueError, match="min_positives must be an integer >= 1"):
        TorchLinearHead(min_positives=0).fit(TRAIN, labels)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        TorchLinearHead(epochs=0).fit(TRAIN, labels)
