import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from harrison_knn.metrics import rank_tags
from harrison_knn.voting import (
    WEIGHTINGS,
    diversified_votes,
    neighbour_gram,
    neighbour_weights,
    tag_prior,
    vote,
    weighted_votes,
)

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


def test_rank_weighting_gives_tied_neighbours_the_mean_of_their_ranks():
    weights = neighbour_weights(
        np.array([[0.9, 0.7, 0.7, 0.5]], dtype=np.float32), weighting="rank"
    )

    # Ranks 2 and 3 are tied, so both get (1/2 + 1/3) / 2 = 5/12; total 25/12.
    raw = np.array([1.0, 5 / 12, 5 / 12, 1 / 4])
    np.testing.assert_allclose(weights[0], raw / raw.sum(), rtol=1e-6)


def test_share_of_a_hashtag_every_voter_carries_is_exactly_one():
    # Ten float32 weights of 0.1 add up to 1.0000001 unless the share is capped.
    every_photo = sp.csr_matrix(np.ones((10, 1), dtype=np.float32))

    scores = vote(
        np.linspace(0.9, 0.1, 10, dtype=np.float32)[None],
        np.arange(10)[None],
        every_photo,
        weighting="count",
    )

    assert scores[0, 0] == np.float32(1.0)


# Property-based tests: random small indexes, neighbourhoods and settings.

# "reconstruction" needs the neighbours' vectors, which these neighbourhoods
# lack; it has property tests of its own below, on real vectors.
WEIGHTING_SETTINGS = st.sampled_from(
    [weighting for weighting in WEIGHTINGS if weighting != "reconstruction"]
)
TEMPERATURES = st.floats(min_value=1e-3, max_value=10.0)
SIMILARITY_VALUES = st.floats(min_value=-1.0, max_value=1.0, width=32)


@st.composite
def neighbourhoods(draw, similarity_levels=None):
    """``(similarities, neighbour_ids, labels)`` as a search would give them.

    Each query's neighbours are distinct photos, nearest first, with empty
    slots (id -1, similarity -inf) at the end when the index is smaller than k
    or the query excludes some. With ``similarity_levels``, similarities are
    drawn from that many values only, so that ties are common.
    """
    n_photos = draw(st.integers(1, 12))
    n_tags = draw(st.integers(1, 6))
    n_queries = draw(st.integers(1, 4))
    k = draw(st.integers(1, 10))
    labels = draw(
        hnp.arrays(np.float32, (n_photos, n_tags), elements=st.sampled_from([0, 1]))
    )
    values = SIMILARITY_VALUES
    if similarity_levels is not None:
        values = st.sampled_from(
            draw(st.lists(SIMILARITY_VALUES, min_size=1, max_size=similarity_levels))
        )
    similarities = np.full((n_queries, k), -np.inf, dtype=np.float32)
    ids = np.full((n_queries, k), -1, dtype=np.int64)
    for row in range(n_queries):
        photos = draw(st.permutations(range(n_photos)))
        found = draw(st.integers(0, min(k, n_photos)))
        ids[row, :found] = photos[:found]
        drawn = draw(st.lists(values, min_size=found, max_size=found))
        similarities[row, :found] = sorted(drawn, reverse=True)
    return similarities, ids, sp.csr_matrix(labels)


@settings(deadline=None)
@given(neighbourhoods(), WEIGHTING_SETTINGS, TEMPERATURES)
def test_scores_without_correction_lie_in_zero_one(
    neighbourhood, weighting, temperature
):
    similarities, ids, labels = neighbourhood

    scores = vote(
        similarities, ids, labels, weighting=weighting, temperature=temperature
    )

    assert scores.dtype == np.float32
    assert scores.shape == (len(ids), labels.shape[1])
    assert scores.min() >= 0.0
    assert scores.max() <= 1.0


@settings(deadline=None)
@given(
    neighbourhoods(),
    WEIGHTING_SETTINGS,
    TEMPERATURES,
    st.floats(min_value=0.0, max_value=1.0),
)
def test_scores_with_correction_lie_in_minus_alpha_one(
    neighbourhood, weighting, temperature, alpha
):
    similarities, ids, labels = neighbourhood

    scores = vote(
        similarities,
        ids,
        labels,
        weighting=weighting,
        temperature=temperature,
        popularity_correction=alpha,
    )

    assert scores.min() >= -np.float32(alpha)
    assert scores.max() <= 1.0


@settings(deadline=None)
@given(neighbourhoods(similarity_levels=3), WEIGHTING_SETTINGS, st.data())
def test_permuting_tied_neighbours_gives_identical_scores(
    neighbourhood, weighting, data
):
    similarities, ids, labels = neighbourhood
    permuted = ids.copy()
    for row in range(len(ids)):
        for value in np.unique(similarities[row]):
            tied = np.flatnonzero(similarities[row] == value)
            permuted[row, tied] = data.draw(st.permutations(ids[row, tied]))

    scores = vote(similarities, ids, labels, weighting=weighting)
    permuted_scores = vote(similarities, permuted, labels, weighting=weighting)

    np.testing.assert_array_equal(permuted_scores, scores)


@settings(deadline=None)
@given(neighbourhoods(), WEIGHTING_SETTINGS, TEMPERATURES)
def test_weights_of_a_query_sum_to_one_or_to_zero_without_neighbours(
    neighbourhood, weighting, temperature
):
    similarities, ids, _ = neighbourhood

    weights = neighbour_weights(
        similarities, ids >= 0, weighting=weighting, temperature=temperature
    )

    has_neighbours = (ids >= 0).any(axis=1)
    assert weights.min() >= 0.0
    assert (weights[ids < 0] == 0).all()
    np.testing.assert_allclose(
        weights.sum(axis=1), has_neighbours.astype(np.float32), atol=1e-6
    )


# The reconstruction weighting: the query as a ridge combination of neighbours.


def test_reconstruction_weights_solve_the_ridge_system_by_hand():
    # Two orthogonal neighbours: G = I, so c = s / (1 + ridge) = (0.3, 0.2)
    # with ridge 1 and similarities (0.6, 0.4); squared, 0.09 and 0.04.
    similarities = np.array([[0.6, 0.4]], dtype=np.float32)
    gram = np.eye(2, dtype=np.float32)[None]

    weights = neighbour_weights(
        similarities, weighting="reconstruction", ridge=1.0, gram=gram
    )

    np.testing.assert_allclose(weights, [[0.09 / 0.13, 0.04 / 0.13]], rtol=1e-6)


def test_reconstruction_lets_duplicates_share_their_weight():
    # Neighbours 0 and 1 are the same vector; 2 is another, as close to the
    # query. Softmax gives the duplicated photo two thirds of the vote; the
    # reconstruction splits one photo's coefficient between the copies.
    query = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    vectors = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    similarities = (vectors @ query)[None].astype(np.float32)
    gram = (vectors @ vectors.T)[None].astype(np.float32)

    weights = neighbour_weights(
        similarities, weighting="reconstruction", ridge=0.01, gram=gram
    )
    softmax = neighbour_weights(similarities, weighting="softmax", temperature=0.1)

    np.testing.assert_allclose(softmax[0], [1 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    # With s = 0.7071 for all three, the copies solve (2 + 0.01) c = s, so
    # c = 0.3518 each, and photo 2 solves (1 + 0.01) c = s, c = 0.7001.
    # Squared and normalised: 0.1678, 0.1678 and 0.6645.
    np.testing.assert_allclose(weights[0], [0.1678, 0.1678, 0.6645], atol=1e-4)


def test_reconstruction_without_the_gram_is_refused():
    with pytest.raises(ValueError, match="needs the inner products"):
        neighbour_weights(SIMILARITIES, weighting="reconstruction")


def test_reconstruction_refuses_a_gram_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"gram must have shape \(1, 3, 3\)"):
        neighbour_weights(
            SIMILARITIES, weighting="reconstruction", gram=np.eye(2)[None]
        )


@pytest.mark.parametrize(
    ("ridge", "message"),
    [
        (0.0, "ridge must be > 0, got 0.0"),
        (float("nan"), "ridge must be > 0, got nan"),
        # Before, an infinite ridge made every coefficient NaN: every neighbour
        # got weight 0 and every hashtag score 0, without an error.
        (float("inf"), "ridge must be a finite number, got inf"),
    ],
)
def test_ridge_must_be_a_finite_number_above_zero(ridge, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        neighbour_weights(
            SIMILARITIES,
            weighting="reconstruction",
            ridge=ridge,
            gram=np.eye(3)[None],
        )


@st.composite
def vector_neighbourhoods(draw):
    """``(similarities, ids, gram)`` of real unit vectors searched by brute force."""
    n_photos = draw(st.integers(1, 10))
    width = draw(st.integers(1, 5))
    k = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n_photos + 2, width))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    photos, queries = vectors[:n_photos], vectors[n_photos:]
    all_similarities = queries @ photos.T
    order = np.argsort(-all_similarities, axis=1)[:, :k]
    found = min(k, n_photos)
    ids = np.full((2, k), -1, dtype=np.int64)
    ids[:, :found] = order[:, :found]
    similarities = np.full((2, k), -np.inf, dtype=np.float32)
    similarities[:, :found] = np.take_along_axis(all_similarities, order, axis=1)[
        :, :found
    ]
    rows = np.where((ids >= 0)[..., None], photos[np.maximum(ids, 0)], 0.0)
    gram = np.matmul(rows, rows.transpose(0, 2, 1)).astype(np.float32)
    return similarities, ids, gram


@settings(deadline=None)
@given(vector_neighbourhoods(), st.floats(min_value=1e-3, max_value=100.0))
def test_reconstruction_weights_sum_to_one_and_skip_empty_slots(neighbourhood, ridge):
    similarities, ids, gram = neighbourhood

    weights = neighbour_weights(
        similarities, ids >= 0, weighting="reconstruction", ridge=ridge, gram=gram
    )

    assert weights.dtype == np.float32
    assert weights.min() >= 0.0
    assert (weights[ids < 0] == 0).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)


def test_reconstruction_of_many_queries_equals_one_solve_per_query():
    # 1,000 queries of k = 100 are solved in two chunks (838 systems each at
    # most); every row must equal its own system solved alone.
    rng = np.random.default_rng(3)
    photos = rng.normal(size=(150, 6))
    photos /= np.linalg.norm(photos, axis=1, keepdims=True)
    queries = rng.normal(size=(1000, 6))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.argsort(-(queries @ photos.T), axis=1)[:, :100]
    similarities = np.take_along_axis(queries @ photos.T, ids, axis=1)
    rows = photos[ids]
    gram = np.matmul(rows, rows.transpose(0, 2, 1))

    weights = neighbour_weights(
        similarities.astype(np.float32),
        weighting="reconstruction",
        ridge=0.5,
        gram=gram.astype(np.float32),
    )

    for query in (0, 837, 838, 999):
        alone = np.linalg.solve(gram[query] + 0.5 * np.eye(100), similarities[query])
        expected = np.clip(alone, 0, None) ** 2
        np.testing.assert_allclose(
            weights[query], expected / expected.sum(), rtol=1e-3, atol=1e-6
        )


def test_weighted_votes_refuses_weights_and_ids_of_other_shapes():
    # Before, scipy's "all index and data arrays must have the same length".
    with pytest.raises(ValueError) as raised:
        weighted_votes(np.full((1, 3), 1 / 3, dtype=np.float32), [[0, 1]], LABELS)

    assert str(raised.value) == (
        "neighbour_ids has shape (1, 2) but weights has (1, 3); both must be "
        "(queries, k)"
    )


def test_weighted_votes_refuses_a_neighbour_outside_the_index():
    # Before, scipy's "axis 1 index 5 exceeds matrix dimension 4".
    with pytest.raises(ValueError) as raised:
        weighted_votes(np.full((1, 2), 0.5, dtype=np.float32), [[0, 5]], LABELS)

    assert str(raised.value) == "neighbour id 5 is outside the index of 4 photos"


def test_neighbour_gram_refuses_a_row_outside_the_vectors():
    # Before, numpy's IndexError.
    with pytest.raises(ValueError) as raised:
        neighbour_gram(np.eye(3, dtype=np.float32), np.array([[0, 3]]))

    assert str(raised.value) == "row 3 is outside the index of 3 photos"


def test_an_empty_index_gives_zero_gram_and_zero_scores():
    ids = np.full((2, 3), -1)

    gram = neighbour_gram(np.zeros((0, 4), dtype=np.float32), ids)
    weights = neighbour_weights(
        np.full((2, 3), -np.inf, dtype=np.float32),
        ids >= 0,
        weighting="reconstruction",
        gram=gram,
    )
    scores = weighted_votes(weights, ids, sp.csr_matrix((0, 3), dtype=np.float32))

    # Before, gathering row 0 of no rows raised IndexError, and the votes an
    # index error from scipy for the empty slots' column 0.
    np.testing.assert_array_equal(gram, np.zeros((2, 3, 3)))
    np.testing.assert_array_equal(weights, np.zeros((2, 3)))
    np.testing.assert_array_equal(scores, np.zeros((2, 3)))


# Diversified votes. Four photos: 0 and 1 carry hashtags 0 and 1, photo 2
# carries hashtag 2, and photo 3 carries hashtags 1 and 2.
ALIKE = sp.csr_matrix(
    np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=np.float32)
)


def test_diversity_votes_the_places_below_with_discounted_neighbours_by_hand():
    weights = np.array([[0.4, 0.3, 0.3]], dtype=np.float32)

    plain = weighted_votes(weights, np.array([[0, 1, 2]]), ALIKE)
    diverse = diversified_votes(weights, np.array([[0, 1, 2]]), ALIKE, diversity=0.75)

    np.testing.assert_allclose(plain, [[0.7, 0.7, 0.3]], rtol=1e-6)
    # Hashtag 0 takes the first place with 0.7; photos 0 and 1 then vote with
    # a quarter of their weight, so hashtag 1 falls to 0.175 and hashtag 2,
    # carried by photo 2 alone, takes the second place with 0.3.
    np.testing.assert_allclose(diverse, [[0.7, 0.175, 0.3]], rtol=1e-6)
    assert rank_tags(diverse, 3)[0].tolist() == [[0, 2, 1]]


def test_a_neighbour_is_discounted_once_however_many_of_its_hashtags_are_placed():
    weights = np.array([[0.5, 0.3, 0.2]], dtype=np.float32)

    scores = diversified_votes(weights, np.array([[3, 0, 2]]), ALIKE, diversity=0.5)

    # Plain: hashtag 0 0.3, hashtag 1 0.8, hashtag 2 0.7. Hashtag 1 is first
    # (0.8); photos 3 and 0 carry it and keep half: hashtag 2 = 0.25 + 0.2 =
    # 0.45, hashtag 0 = 0.15. Hashtag 2 is second; photo 3, which carries it
    # too, keeps half of its weight, not a quarter: hashtag 0 stays 0.15.
    np.testing.assert_allclose(scores, [[0.15, 0.8, 0.45]], rtol=1e-6)


def test_diversity_with_popularity_correction_by_hand():
    weights = np.array([[0.4, 0.3, 0.3]], dtype=np.float32)
    prior = np.array([0.5, 0.75, 0.5], dtype=np.float32)

    scores = diversified_votes(
        weights,
        np.array([[0, 1, 2]]),
        ALIKE,
        diversity=0.75,
        popularity_correction=0.5,
        prior=prior,
    )

    # Corrected plain scores: 0.7 - 0.25, 0.7 - 0.375, 0.3 - 0.25. Hashtag 0
    # is first; then hashtag 1 is 0.175 - 0.375 and hashtag 2 stays 0.05.
    np.testing.assert_allclose(scores, [[0.45, -0.2, 0.05]], rtol=1e-5)


def test_no_diversity_gives_the_plain_votes_exactly():
    weights = np.array([[0.4, 0.3, 0.3], [0.6, 0.4, 0.0]], dtype=np.float32)
    ids = np.array([[0, 1, 2], [3, 2, -1]])

    assert np.array_equal(
        diversified_votes(weights, ids, ALIKE, diversity=0.0),
        weighted_votes(weights, ids, ALIKE),
    )


def test_diversity_with_no_query_or_no_place_to_fill():
    empty = diversified_votes(
        np.zeros((0, 3), dtype=np.float32),
        np.zeros((0, 3), dtype=np.int64),
        ALIKE,
        diversity=0.5,
    )
    weights = np.array([[0.4, 0.3, 0.3]], dtype=np.float32)
    unranked = diversified_votes(
        weights, np.array([[0, 1, 2]]), ALIKE, diversity=0.5, depth=0
    )

    assert empty.shape == (0, 3)
    np.testing.assert_allclose(unranked, [[0.7, 0.7, 0.3]], rtol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"diversity": 1.0}, r"diversity must lie in \[0, 1\), got 1.0"),
        ({"diversity": -0.1}, r"diversity must lie in \[0, 1\), got -0.1"),
        ({"diversity": float("nan")}, r"diversity must lie in \[0, 1\), got nan"),
        ({"diversity": "0.5"}, "diversity must be a number, got '0.5'"),
        ({"diversity": True}, "diversity must be a number, got True"),
        ({"diversity": 0.5, "depth": -1}, "depth must be >= 0, got -1"),
        ({"diversity": 0.5, "depth": 2.5}, "depth must be a whole number, got 2.5"),
        (
            {"diversity": 0.5, "popularity_correction": "0.5"},
            "popularity_correction must be a number, got '0.5'",
        ),
    ],
)
def test_bad_diversity_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        diversified_votes(
            np.array([[0.4, 0.3, 0.3]], dtype=np.float32),
            np.array([[0, 1, 2]]),
            ALIKE,
            **options,
        )


@settings(deadline=None)
@given(
    neighbourhoods(),
    WEIGHTING_SETTINGS,
    st.floats(min_value=0.0, max_value=0.99),
    st.floats(min_value=0.0, max_value=1.0),
    st.integers(0, 7),
)
def test_diversified_ranking_is_the_greedy_order(
    neighbourhood, weighting, diversity, alpha, depth
):
    similarities, ids, labels = neighbourhood
    weights = neighbour_weights(similarities, ids >= 0, weighting=weighting)
    prior = tag_prior(labels)
    plain = weighted_votes(
        weights, ids, labels, popularity_correction=alpha, prior=prior
    )

    scores = diversified_votes(
        weights,
        ids,
        labels,
        diversity=diversity,
        popularity_correction=alpha,
        prior=prior,
        depth=depth,
    )

    n_tags = labels.shape[1]
    places = min(depth, n_tags)
    order = rank_tags(scores, n_tags)[0]
    dense = labels.toarray() > 0
    for row in range(len(ids)):
        # Follow the ranking in float64: each placed hashtag must have had the
        # best vote of those not placed yet, given the discounts of the
        # places above it, and its score must be that vote.
        keep = np.ones(ids.shape[1])
        for place in range(places + 1):
            votes = np.zeros(n_tags)
            for slot, photo in enumerate(ids[row]):
                if photo >= 0:
                    votes += weights[row, slot] * keep[slot] * dense[photo]
            votes -= alpha * prior
            unplaced = order[row, place:]
            if place == places:
                # Hashtags beyond the places keep their vote after the last.
                np.testing.assert_allclose(
                    scores[row, unplaced], votes[unplaced], atol=1e-5
                )
                break
            tag = order[row, place]
            assert votes[tag] >= votes[unplaced].max() - 1e-5
            assert scores[row, tag] == pytest.approx(votes[tag], abs=1e-5)
            for slot, photo in enumerate(ids[row]):
                if photo >= 0 and dense[photo, tag]:
                    keep[slot] = 1.0 - diversity
    # The first place is the plain vote's first place.
    if places:
        assert np.array_equal(rank_tags(scores, 1)[0], rank_tags(plain, 1)[0])
