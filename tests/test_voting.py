import numpy as np
import pytest
import scipy.sparse as sp

from harrison_knn.voting import neighbour_weights, tag_prior, vote

# Four indexed photos, three hashtags:
# photo 0 carries tags 0 and 1, photo 1 tag 1, photo 2 tag 2, photo 3 tag 0.
LABELS = sp.csr_matrix(
    np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float32)
)
SIMILARITIES = np.array([[0.9, 0.8, 0.5]], dtype=np.float32)
NEIGHBOURS = np.array([[0, 1, 2]])


def test_similarity_weighting_gives_each_tag_its_weighted_share():
    scores = vote(SIMILARITIES, NEIGHBOURS, LABELS, weighting="similarity")

    # Weights 0.9, 0.8 and 0.5 over a total of 2.2.
    expected = [0.9 / 2.2, (0.9 + 0.8) / 2.2, 0.5 / 2.2]
    np.testing.assert_allclose(scores[0], expected, rtol=1e-6)


def test_softmax_weighting_by_hand():
    scores = vote(
        SIMILARITIES, NEIGHBOURS, LABELS, weighting="softmax", temperature=0.1
    )

    # exp((s - 0.9) / 0.1) = 1, e^-1, e^-4.
    raw = np.array([1.0, np.exp(-1.0), np.exp(-4.0)])
    w = raw / raw.sum()
    np.testing.assert_allclose(scores[0], [w[0], w[0] + w[1], w[2]], rtol=1e-5)
    assert scores[0, 1] == pytest.approx(0.986787, abs=1e-5)


def test_rank_weighting_by_hand():
    scores = vote(SIMILARITIES, NEIGHBOURS, LABELS, weighting="rank")

    # Weights 1, 1/2, 1/3 over 11/6 are 6/11, 3/11, 2/11.
    np.testing.assert_allclose(scores[0], [6 / 11, 9 / 11, 2 / 11], rtol=1e-6)


def test_empty_slots_cast_no_vote():
    scores = vote(
        np.array([[0.7, -np.inf, -np.inf]], dtype=np.float32),
        np.array([[3, -1, -1]]),
        LABELS,
        weighting="count",
    )

    np.testing.assert_allclose(scores[0], [1.0, 0.0, 0.0])


def test_query_without_neighbours_scores_zero():
    scores = vote(
        np.full((1, 2), -np.inf, dtype=np.float32), np.full((1, 2), -1), LABELS
    )

    np.testing.assert_array_equal(scores, np.zeros((1, 3), dtype=np.float32))


def test_popularity_correction_subtracts_the_prior():
    plain = vote(SIMILARITIES, NEIGHBOURS, LABELS, weighting="count")
    corrected = vote(
        SIMILARITIES, NEIGHBOURS, LABELS, weighting="count", popularity_correction=0.5
    )

    np.testing.assert_allclose(tag_prior(LABELS), [0.5, 0.5, 0.25])
    np.testing.assert_allclose(plain[0], [1 / 3, 2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(
        corrected[0], [1 / 3 - 0.25, 2 / 3 - 0.25, 1 / 3 - 0.125], rtol=1e-6
    )


def test_weights_sum_to_one_per_query():
    similarities = np.array([[0.5, 0.4, 0.1], [0.2, 0.1, 0.0]], dtype=np.float32)

    for weighting in ("softmax", "similarity", "rank", "count"):
        weights = neighbour_weights(similarities, weighting=weighting)
        np.testing.assert_allclose(weights.sum(axis=1), [1.0, 1.0], rtol=1e-6)


def test_negative_similarities_fall_back_to_equal_votes():
    weights = neighbour_weights(
        np.array([[-0.2, -0.3]], dtype=np.float32), weighting="similarity"
    )

    np.testing.assert_allclose(weights, [[0.5, 0.5]])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weighting": "majority"}, "unknown weighting 'majority'"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"popularity_correction": 1.5}, "popularity_correction must lie in"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        vote(SIMILARITIES, NEIGHBOURS, LABELS, **options)


def test_neighbour_outside_the_index_is_refused():
    with pytest.raises(ValueError, match="neighbour id 7 is outside the index of 4"):
        vote(SIMILARITIES, np.array([[0, 1, 7]]), LABELS)
