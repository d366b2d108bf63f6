import json
import re

import numpy as np
import pytest
import scipy.sparse as sp

from harrison_knn.build import _voting_settings
from harrison_knn.tuning import (
    TuningResult,
    VotingParameters,
    _least_diverse_within_noise,
    _search_fold,
    select_by_threshold,
    tune_voting,
)


def clustered(n_per_cluster=30, clusters=4, seed=0):
    """Photos in well-separated clusters; cluster c carries hashtag c and a
    random one of the extra hashtags clusters .. clusters + 3."""
    rng = np.random.default_rng(seed)
    centres = np.eye(clusters, 16, dtype=np.float32) * 4
    rows, labels = [], []
    for c in range(clusters):
        points = centres[c] + rng.normal(scale=0.3, size=(n_per_cluster, 16))
        rows.append(points)
        for _ in range(n_per_cluster):
            tags = np.zeros(clusters + 4, dtype=np.float32)
            tags[c] = 1
            tags[clusters + rng.integers(4)] = 1
            labels.append(tags)
    embeddings = np.concatenate(rows).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings, sp.csr_matrix(np.array(labels))


def test_every_candidate_is_scored_and_the_best_wins():
    embeddings, labels = clustered()
    grid = {
        "k": (1, 10),
        "weighting": (("softmax", 0.1), ("count", 0.1)),
        "popularity_correction": (0.0, 0.5),
    }

    result = tune_voting(embeddings, labels, folds=3, grid=grid)

    # 4 search spaces (the default: plain or half label projection, photos
    # stored as they are or pulled 0.75 toward their prototypes) x 8.
    assert len(result.candidates) == 32
    assert {c["projection_mix"] for c in result.candidates} == {1.0, 0.5}
    assert {c["prototype_pull"] for c in result.candidates} == {0.0, 0.75}
    objectives = [c["objective"] for c in result.candidates]
    assert objectives == sorted(objectives, reverse=True)
    # The winner is then scored at each diversity of the default grid; at 0
    # its ranking is the plain one, and so is its score.
    assert [row["diversity"] for row in result.diversities] == [0.0, 0.25, 0.5, 0.75]
    assert result.diversities[0]["objective"] == objectives[0]
    assert result.objective == max(row["objective"] for row in result.diversities)
    assert result.chosen["objective"] == result.objective
    best = result.candidates[0]
    assert result.parameters.k == best["k"]
    assert result.parameters.weighting == best["weighting"]
    # The cluster hashtag is always right: every photo of a cluster carries it.
    assert best["P@1"] == 1.0
    assert best["A@5"] == 1.0


def test_a_single_candidate_grid_returns_that_setting():
    embeddings, labels = clustered()
    grid = {
        "k": (7,),
        "weighting": (("reconstruction", 2.0),),
        "popularity_correction": (0.25,),
        "projection_mix": (0.5,),
        "prototype_pull": (0.5,),
        "diversity": (0.5,),
    }

    result = tune_voting(embeddings, labels, folds=2, grid=grid)

    # The weighting's parameter is the ridge of "reconstruction"; the
    # temperature keeps the library's default.
    assert result.parameters.as_settings() == {
        "k": 7,
        "weighting": "reconstruction",
        "temperature": 0.05,
        "popularity_correction": 0.25,
        "ridge": 2.0,
        "projection_mix": 0.5,
        "prototype_pull": 0.5,
        "diversity": 0.5,
    }
    assert len(result.candidates) == 1
    assert len(result.diversities) == 1


@pytest.mark.parametrize("space", [(0.5, 0.0), (1.0, 0.75), (0.5, 0.75)])
def test_a_fold_is_searched_in_a_space_fitted_without_its_queries(space):
    embeddings, labels = clustered()
    train_ids, test_ids = np.arange(0, 90), np.arange(90, 120)
    shuffled = labels.toarray()
    shuffled[test_ids] = np.random.default_rng(1).permutation(shuffled[test_ids])

    search = _search_fold(embeddings, labels, train_ids, test_ids, space, 10, 0)
    relabelled = _search_fold(
        embeddings, sp.csr_matrix(shuffled), train_ids, test_ids, space, 10, 0
    )

    # The queries' own hashtags never reach the projection or the prototypes:
    # changing them changes no similarity and no neighbour.
    assert (shuffled[test_ids] != labels.toarray()[test_ids]).any()
    np.testing.assert_array_equal(relabelled.similarities, search.similarities)
    np.testing.assert_array_equal(relabelled.neighbours, search.neighbours)
    assert search.similarities.shape == (30, 10)
    assert search.gram is None


def test_reconstruction_weights_are_searched_up_to_their_largest_k():
    embeddings, labels = clustered(n_per_cluster=70)
    grid = {
        "k": (10, 200),
        "weighting": (("softmax", 0.1), ("reconstruction", 2.0)),
        "popularity_correction": (0.0,),
        "projection_mix": (1.0,),
        "prototype_pull": (0.0,),
    }

    result = tune_voting(embeddings, labels, folds=5, grid=grid)

    # The (200, 200) inner products of 2,000 queries' neighbours would take
    # 320 MB; reconstruction is tried at k = 10 only.
    tried = sorted((c["k"], c["weighting"]) for c in result.candidates)
    assert tried == [(10, "reconstruction"), (10, "softmax"), (200, "softmax")]


def test_reconstruction_weights_at_a_fixed_large_k_are_searched_as_given():
    embeddings, labels = clustered(n_per_cluster=70)
    grid = {
        "k": (200,),
        "weighting": (("reconstruction", 2.0),),
        "popularity_correction": (0.0,),
        "projection_mix": (1.0,),
        "prototype_pull": (0.0,),
    }

    result = tune_voting(embeddings, labels, folds=5, grid=grid)

    assert [(c["k"], c["weighting"]) for c in result.candidates] == [
        (200, "reconstruction")
    ]
    assert result.parameters.k == 200
    assert 0.9 < result.candidates[0]["P@1"] <= 1.0


def test_neighbour_counts_larger_than_a_fold_are_dropped():
    embeddings, labels = clustered(n_per_cluster=5)

    result = tune_voting(embeddings, labels, folds=2, grid={"k": (5, 10, 500)})

    assert sorted({c["k"] for c in result.candidates}) == [5, 10]


def test_threshold_keeps_the_cluster_hashtag_and_drops_the_noise():
    embeddings, labels = clustered()

    result = tune_voting(embeddings, labels, folds=3, grid={"k": (20,)})

    # The cluster hashtag scores about 1, each noise hashtag about 1/4.
    assert 0.3 < result.threshold <= 1.0


def test_same_seed_same_choice():
    embeddings, labels = clustered(seed=3)

    first = tune_voting(embeddings, labels, folds=3, seed=5)
    second = tune_voting(embeddings, labels, folds=3, seed=5)

    assert first.parameters == second.parameters
    assert first.threshold == second.threshold


def test_too_few_photos_are_refused():
    embeddings, labels = clustered(n_per_cluster=1)

    with pytest.raises(ValueError, match="got 4 photos and 5 folds"):
        tune_voting(embeddings, labels, folds=5)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        # Before, NaN and 2.0 were searched as the plain embeddings and then
        # returned as the chosen projection_mix (NaN would be saved as such).
        (
            {"projection_mix": (float("nan"),)},
            r"projection_mix must lie in \(0, 1\], got nan",
        ),
        (
            {"projection_mix": (1.0, 2.0)},
            r"projection_mix must lie in \(0, 1\], got 2.0",
        ),
        # A pull of 1 would leave no trace of a photo's own vector to take back.
        (
            {"prototype_pull": (0.0, 1.0)},
            r"prototype_pull must lie in \[0, 0.99\], got 1.0",
        ),
        (
            {"prototype_pull": (float("nan"),)},
            r"prototype_pull must lie in \[0, 0.99\], got nan",
        ),
        # Before, every reconstruction weight came out 0, and so every score.
        (
            {"weighting": (("reconstruction", float("inf")),)},
            "ridge must be a finite number, got inf",
        ),
        ({"diversity": (0.0, 1.0)}, r"diversity must lie in \[0, 1\), got 1.0"),
        ({"diversity": ("0.5",)}, "diversity must be a number, got '0.5'"),
    ],
)
def test_bad_values_in_the_grid_are_refused(grid, message):
    embeddings, labels = clustered(n_per_cluster=3)

    with pytest.raises(ValueError, match=f"^{message}$"):
        tune_voting(embeddings, labels, folds=2, grid={"k": (2,), **grid})


def test_a_choice_listed_twice_is_scored_once():
    embeddings, labels = clustered()
    grid = {
        "k": (5, 5),
        "weighting": (("softmax", 0.05),),
        "popularity_correction": (0.0,),
        "projection_mix": (1.0,),
        "prototype_pull": (0.0, 0.75, 0.75, -0.0),
    }

    result = tune_voting(embeddings, labels, folds=3, grid=grid)

    # Before, a repeat added both its scores into one total and won with an
    # objective above 1.
    assert sorted(c["prototype_pull"] for c in result.candidates) == [0.0, 0.75]
    assert all(c["objective"] <= 1.0 for c in result.candidates)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"prototype_pul": (0.5,)}, "unknown tuning grid entries: prototype_pul; "),
        ({"prototype_pull": 0.75}, "the tuning grid entry prototype_pull must be a "),
        ({"k": "20"}, "the tuning grid entry k must be a list of choices, got '20'"),
        ({"k": ()}, "the tuning grid entry k holds no choice"),
        ({"k": (0,)}, "k must be at least 1, got 0"),
        ({"k": (2.5,)}, "k must be a whole number, got 2.5"),
        ({"prototype_pull": ("0.5",)}, "prototype_pull must be a number, got '0.5'"),
    ],
)
def test_a_malformed_grid_is_refused_naming_the_entry(grid, message):
    embeddings, labels = clustered(n_per_cluster=3)

    # Before: ignored, 'float' object is not iterable, a silent k of 24, a bare
    # AssertionError from faiss, or a TypeError naming no setting.
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        tune_voting(embeddings, labels, folds=2, grid=grid)


def test_select_by_threshold_keeps_the_best_hashtag_always():
    scores = np.array([[0.9, 0.5, 0.1, 0.3], [0.05, 0.02, 0.01, 0.0]], dtype=np.float32)

    chosen = select_by_threshold(scores, 0.3)

    assert chosen[0].tolist() == [0, 1, 3]
    assert chosen[1].tolist() == [0]


def test_diversity_is_chosen_when_one_guess_fills_the_first_places():
    # 55 photos carry hashtags 0 to 5 together, 45 carry hashtag 6 alone, and
    # their embeddings do not tell them apart. With plain votes the first five
    # places go to hashtags 0 to 4, which is wrong for every photo of hashtag
    # 6; once hashtag 0 is placed and its photos vote with half their weight,
    # hashtag 6 takes the second place.
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(100, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = np.zeros((100, 7), dtype=np.float32)
    labels[:55, :6] = 1
    labels[55:, 6] = 1
    grid = {
        "k": (80,),
        "weighting": (("count", None),),
        "popularity_correction": (0.0,),
        "projection_mix": (1.0,),
        "prototype_pull": (0.0,),
    }

    result = tune_voting(embeddings, sp.csr_matrix(labels), grid=grid)

    rows = result.diversities
    assert [row["diversity"] for row in rows] == [0.0, 0.25, 0.5, 0.75]
    assert [row["A@5"] for row in rows] == pytest.approx([0.58, 0.76, 1.0, 1.0])
    # The first place never changes.
    assert [row["P@1"] for row in rows] == pytest.approx([0.41] * 4)
    # 0.5 and 0.75 tie; the first of them in the grid wins.
    assert result.parameters.diversity == 0.5
    assert result.objective == pytest.approx(rows[2]["objective"])
    assert result.chosen["A@5"] == pytest.approx(1.0)


def test_a_diversity_is_kept_only_for_a_gain_beyond_the_folds_noise():
    plain = np.array([0.50, 0.52, 0.48, 0.50, 0.50])
    # Ahead on the mean by 0.004, but the folds disagree: gaps of 0.01,
    # -0.02, 0.02, 0.02 and -0.01 have a standard error of 0.008.
    noisy = np.array([0.51, 0.50, 0.50, 0.52, 0.49])
    # Ahead by 0.002 on every fold: a standard error of 0.00016.
    steady = plain + np.array([0.002, 0.0025, 0.0015, 0.002, 0.002])

    assert _least_diverse_within_noise(np.stack([plain, noisy])) == 0
    assert _least_diverse_within_noise(np.stack([plain, steady])) == 1
    # Equal choices: the first, the least diverse.
    assert _least_diverse_within_noise(np.stack([plain, steady, steady])) == 1


def test_chosen_without_scores_for_the_chosen_diversity_names_it():
    result = TuningResult(
        VotingParameters(
            k=5,
            weighting="count",
            temperature=0.05,
            popularity_correction=0.0,
            diversity=0.5,
        ),
        threshold=0.1,
        objective=0.5,
        diversities=[
            {"diversity": 0.0, "P@1": 0.5, "R@5": 0.5, "A@5": 0.5, "objective": 0.5}
        ],
    )

    with pytest.raises(
        ValueError,
        match=r"^no cross-validated scores for diversity 0.5 among the result's "
        r"diversities$",
    ):
        _ = result.chosen


def test_build_settings_keep_a_fixed_diversity():
    embeddings, labels = clustered()

    settings = _voting_settings(
        embeddings, labels, {"diversity": 0.25}, tune=True, seed=0
    )

    assert settings["diversity"] == 0.25
    assert settings["cross_validation"]["diversity"] == 0.25
    assert settings["tuned"] is True


def test_build_settings_keep_what_the_caller_fixed():
    embeddings, labels = clustered()

    settings = _voting_settings(embeddings, labels, {"k": 15}, tune=True, seed=0)

    assert settings["k"] == 15
    assert settings["tuned"] is True
    assert settings["threshold"] is not None


def test_build_settings_without_tuning_are_the_defaults():
    embeddings, labels = clustered()

    settings = _voting_settings(embeddings, labels, {}, tune=False, seed=0)

    assert settings == {
        "k": 20,
        "weighting": "softmax",
        "temperature": 0.05,
        "popularity_correction": 0.0,
        "ridge": 1.0,
        "projection_mix": 1.0,
        "prototype_pull": 0.0,
        "diversity": 0.0,
        "threshold": None,
        "tuned": False,
    }


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"k": "20"}, "k must be a whole number, got '20'"),
        ({"temperature": None}, "temperature must be a number, got None"),
        ({"prototype_pull": "0.5"}, "prototype_pull must be a number, got '0.5'"),
        ({"projection_mix": False}, "projection_mix must be a number, got False"),
    ],
)
def test_build_settings_that_are_not_numbers_are_named(given, message):
    embeddings, labels = clustered()

    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _voting_settings(embeddings, labels, given, tune=False, seed=0)


def test_build_settings_given_as_numpy_numbers_are_saved_as_plain_ones():
    embeddings, labels = clustered()
    given = {"prototype_pull": np.float32(0.5), "k": np.int64(7)}

    settings = _voting_settings(embeddings, labels, given, tune=False, seed=0)

    # Before, np.float32 reached json.dumps after every photo was embedded.
    assert json.loads(json.dumps(settings))["prototype_pull"] == 0.5
    assert type(settings["k"]) is int


def test_unknown_voting_setting_is_named():
    embeddings, labels = clustered()

    with pytest.raises(ValueError, match="unknown voting settings: kk"):
        _voting_settings(embeddings, labels, {"kk": 3}, tune=False, seed=0)
