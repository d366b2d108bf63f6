"""Tests of harrison_knn.metrics: hand-computed values and scikit-learn parity."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    coverage_error,
    label_ranking_average_precision_score,
    top_k_accuracy_score,
)

from harrison_knn.metrics import (
    STANDARD_KS,
    accuracy_at_k,
    evaluate,
    f1_at_k,
    mean_average_precision,
    precision_at_k,
    rank_tags,
    recall_at_k,
)

# Three photos, five hashtags. The rankings, best first, are
#   photo 0: 0 2 3 4 1   true {0, 3}  hits 1 0 1 0 0
#   photo 1: 0 1 3 2 4   true {3}     hits 0 0 1 0 0  (0, 1, 3 tie: lower id first)
#   photo 2: 4 3 2 1 0   true {0, 1}  hits 0 0 0 1 1
SCORES = np.array(
    [
        [0.9, 0.1, 0.8, 0.3, 0.2],
        [0.5, 0.5, 0.1, 0.5, 0.0],
        [0.0, 0.2, 0.4, 0.6, 0.8],
    ],
    np.float32,
)
TRUTH = sp.csr_matrix(
    np.array(
        [
            [1, 0, 0, 1, 0],
            [0, 0, 0, 1, 0],
            [1, 1, 0, 0, 0],
        ],
        np.float32,
    )
)


def test_rank_tags_orders_by_score_then_lower_id():
    tag_ids, tag_scores = rank_tags(SCORES, 5)

    assert tag_ids.dtype == np.int64
    assert tag_scores.dtype == np.float32
    assert tag_ids.tolist() == [[0, 2, 3, 4, 1], [0, 1, 3, 2, 4], [4, 3, 2, 1, 0]]
    np.testing.assert_array_equal(tag_scores[1], SCORES[1, [0, 1, 3, 2, 4]])


def test_rank_tags_cut_inside_a_tie_keeps_the_lowest_ids():
    scores = np.array([[1.0, 2.0, 2.0, 2.0, 0.0], [-np.inf, 0.0, -np.inf, 3.0, 3.0]])

    assert rank_tags(scores, 1)[0].tolist() == [[1], [3]]
    assert rank_tags(scores, 2)[0].tolist() == [[1, 2], [3, 4]]
    assert rank_tags(scores, 4)[0].tolist() == [[1, 2, 3, 0], [3, 4, 1, 0]]


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(0, 4), min_size=6 * 7, max_size=6 * 7),
    top=st.integers(1, 7),
)
def test_rank_tags_equals_a_stable_full_sort(values, top):
    scores = np.array(values, np.float32).reshape(6, 7)

    tag_ids, tag_scores = rank_tags(scores, top)

    expected = np.argsort(-scores, axis=1, kind="stable")[:, :top]
    np.testing.assert_array_equal(tag_ids, expected)
    np.testing.assert_array_equal(tag_scores, np.take_along_axis(scores, expected, 1))


def test_rank_tags_rejects_a_top_out_of_range():
    with pytest.raises(ValueError, match="top must be between 1 and n_tags=5, got 6"):
        rank_tags(SCORES, 6)
    with pytest.raises(ValueError, match="got 0"):
        rank_tags(SCORES, 0)


def test_hand_computed_metrics():
    assert precision_at_k(SCORES, TRUTH, 1) == pytest.approx(1 / 3)
    assert precision_at_k(SCORES, TRUTH, 2) == pytest.approx(1 / 6)
    assert precision_at_k(SCORES, TRUTH, 5) == pytest.approx(
        (2 / 5 + 1 / 5 + 2 / 5) / 3
    )
    assert recall_at_k(SCORES, TRUTH, 1) == pytest.approx(1 / 6)
    assert recall_at_k(SCORES, TRUTH, 3) == pytest.approx(2 / 3)
    assert recall_at_k(SCORES, TRUTH, 4) == pytest.approx(5 / 6)
    assert recall_at_k(SCORES, TRUTH, 5) == pytest.approx(1.0)
    assert accuracy_at_k(SCORES, TRUTH, 1) == pytest.approx(1 / 3)
    assert accuracy_at_k(SCORES, TRUTH, 3) == pytest.approx(2 / 3)
    assert accuracy_at_k(SCORES, TRUTH, 4) == pytest.approx(1.0)
    # Per photo 2h / (k + n): 4/5, 2/4 and 0.
    assert f1_at_k(SCORES, TRUTH, 3) == pytest.approx(13 / 30)
    # Average precisions (1 + 2/3) / 2, (1/3) / 1 and (1/4 + 2/5) / 2.
    assert mean_average_precision(SCORES, TRUTH) == pytest.approx(179 / 360)


def test_dense_and_sparse_truth_give_the_same_values():
    dense_int = TRUTH.toarray().astype(int)
    dense_bool = TRUTH.toarray().astype(bool)

    assert evaluate(SCORES, dense_int, ks={"R": (3,)}) == evaluate(
        SCORES, TRUTH, ks={"R": (3,)}
    )
    assert precision_at_k(SCORES, dense_bool, 1) == pytest.approx(1 / 3)


def test_a_photo_without_true_hashtags_counts_for_precision_only():
    scores = np.vstack([SCORES, [[0.9, 0.8, 0.7, 0.6, 0.5]]])
    truth = sp.vstack([TRUTH, sp.csr_matrix((1, 5), dtype=np.float32)])

    assert precision_at_k(scores, truth, 1) == pytest.approx(1 / 4)
    assert accuracy_at_k(scores, truth, 3) == pytest.approx(2 / 4)
    assert recall_at_k(scores, truth, 3) == pytest.approx(2 / 3)
    assert f1_at_k(scores, truth, 3) == pytest.approx(13 / 30)
    assert mean_average_precision(scores, truth) == pytest.approx(179 / 360)


def test_metrics_without_any_true_hashtag_raise():
    empty = np.zeros((3, 5))

    assert precision_at_k(SCORES, empty, 1) == 0.0
    with pytest.raises(ValueError, match="none of the 3 photos has a true hashtag"):
        recall_at_k(SCORES, empty, 1)
    with pytest.raises(ValueError, match="none of the 3 photos"):
        mean_average_precision(SCORES, empty)


def test_evaluate_gives_the_requested_cut_offs_then_map():
    result = evaluate(SCORES, TRUTH, ks={"P": (1, 3), "R": (3, 5), "A": (3,)})

    assert list(result) == ["P@1", "P@3", "R@3", "R@5", "A@3", "mAP"]
    assert result["P@1"] == pytest.approx(1 / 3)
    assert result["R@3"] == pytest.approx(2 / 3)
    assert result["A@3"] == pytest.approx(2 / 3)
    assert result["mAP"] == pytest.approx(179 / 360)


def test_evaluate_gives_the_standard_set_by_default():
    rng = np.random.default_rng(0)
    scores = rng.random((20, 12)).astype(np.float32)
    truth = rng.random((20, 12)) < 0.3
    truth[:, 0] = True

    result = evaluate(scores, truth)

    expected = ["P@1", "P@3", "P@5"] + [f"R@{k}" for k in range(1, 11)]
    assert list(result) == [*expected, "A@5", "F1@5", "mAP"]
    assert STANDARD_KS["R"] == tuple(range(1, 11))
    assert all(0.0 <= value <= 1.0 for value in result.values())
    assert result["R@5"] == pytest.approx(recall_at_k(scores, truth, 5))
    assert result["F1@5"] == pytest.approx(f1_at_k(scores, truth, 5))


def test_mismatched_shapes_raise_naming_both():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        precision_at_k(SCORES, TRUTH[:, :4], 1)
    with pytest.raises(ValueError, match=r"\(2, 5\).*\(3, 5\)"):
        evaluate(SCORES, TRUTH[:2], ks={"P": (1,)})


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="k must be between 1 and n_tags=5, got 6"):
        recall_at_k(SCORES, TRUTH, 6)
    with pytest.raises(TypeError, match="must be an integer"):
        recall_at_k(SCORES, TRUTH, 1.5)
    with pytest.raises(ValueError, match=r"R@k must be between 1 and n_tags=5, got 6"):
        evaluate(SCORES, TRUTH)
    with pytest.raises(ValueError, match="unknown metric prefixes \\['Q'\\]"):
        evaluate(SCORES, TRUTH, ks={"Q": (1,)})
    with_nan = SCORES.copy()
    with_nan[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN in photo rows \\[1\\]"):
        precision_at_k(with_nan, TRUTH, 1)
    with pytest.raises(ValueError, match="only 0 and 1, found \\[2"):
        precision_at_k(SCORES, TRUTH * 2, 1)
    with pytest.raises(ValueError, match="2-D"):
        precision_at_k(SCORES[0], TRUTH[0], 1)


def test_map_equals_sklearn_label_ranking_average_precision_without_ties():
    rng = np.random.default_rng(1)
    scores = rng.random((200, 30)).astype(np.float64)
    truth = rng.random((200, 30)) < 0.15
    truth[np.arange(200), rng.integers(0, 30, 200)] = True

    expected = label_ranking_average_precision_score(truth, scores)

    assert mean_average_precision(scores, truth) == pytest.approx(expected, abs=1e-12)


def test_single_label_accuracy_and_recall_equal_sklearn_top_k_accuracy():
    # top_k_accuracy_score is for one true class per sample: there, A@k and R@k
    # both say whether the true hashtag is in the top k.
    rng = np.random.default_rng(2)
    scores = rng.random((300, 15))
    labels = rng.integers(0, 15, 300)
    truth = np.zeros((300, 15), bool)
    truth[np.arange(300), labels] = True

    for k in (1, 3, 5):
        expected = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(15))
        assert accuracy_at_k(scores, truth, k) == pytest.approx(expected)
        assert recall_at_k(scores, truth, k) == pytest.approx(expected)
    assert precision_at_k(scores, truth, 1) == pytest.approx(
        top_k_accuracy_score(labels, scores, k=1, labels=np.arange(15))
    )


def test_full_recall_at_k_agrees_with_sklearn_coverage_error_per_photo():
    # coverage_error of one photo is the depth that reaches all its true tags.
    rng = np.random.default_rng(3)
    scores = rng.random((40, 10))
    truth = rng.random((40, 10)) < 0.25
    truth[:, 9] = True

    for i in range(40):
        depth = coverage_error(truth[i : i + 1], scores[i : i + 1])
        for k in (1, 3, 6):
            full = recall_at_k(scores[i : i + 1], truth[i : i + 1], k) == 1.0
            assert full == (depth <= k)
