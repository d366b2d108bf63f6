"""Choosing voting parameters by cross-validation on the indexed photos only.

The search splits the photos it is given into folds; each fold's photos query
an index of the other folds' photos, and every candidate setting of the search
space (plain embeddings, or embeddings joined with a
:class:`~harrison_knn.metric.LabelProjection`; indexed photos as they are, or
pulled toward :class:`~harrison_knn.metric.TagPrototypes`; both fitted on the
other folds alone), the neighbour count, the weighting and its parameter, and
the popularity correction is scored on them. The setting with the best mean
of Precision@1, Recall@5 and Accuracy@5 wins. Given only a build's training
photos, nothing held out for testing is ever seen, so scores measured
afterwards on held-out photos are honest (the search is nested inside any
outer evaluation).

Two choices are then made on the out-of-fold votes of the winning setting
alone: the ``diversity`` of the ranking (see
:func:`~harrison_knn.voting.diversified_votes`), the least diverse whose
objective is within one standard error of the best one's, so that a small
collection does not trade the plain ranking for a gain the folds disagree
on; and a score threshold for variable-length answers, the one that gives
the best mean F1 between a photo's suggested set and its true hashtags.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np
import scipy.sparse as sp

from .dataset import fold_indices
from .metric import check_mix, check_pull, fit_search_space
from .metrics import rank_tags
from .voting import (
    DEFAULT_DIVERSITY,
    DEFAULT_RIDGE,
    DEFAULT_TEMPERATURE,
    check_diversity,
    check_number,
    diversified_votes,
    neighbour_gram,
    neighbour_weights,
    tag_prior,
    weighted_votes,
)

__all__ = [
    "DEFAULT_GRID",
    "TuningResult",
    "VotingParameters",
    "select_by_threshold",
    "tune_voting",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VotingParameters:
    """One voting setting: the keyword arguments of :func:`voting.vote`, and
    the search space: the share ``projection_mix`` of the plain embedding (1
    searches the embeddings as they are; see
    :class:`~harrison_knn.metric.LabelProjection`) and the ``prototype_pull``
    of indexed photos toward their hashtags (0 stores them as they are; see
    :class:`~harrison_knn.metric.TagPrototypes`). ``diversity`` is that of
    :func:`~harrison_knn.voting.diversified_votes`."""

    k: int
    weighting: str
    temperature: float
    popularity_correction: float
    ridge: float = DEFAULT_RIDGE
    projection_mix: float = 1.0
    prototype_pull: float = 0.0
    diversity: float = DEFAULT_DIVERSITY

    def as_settings(self) -> dict[str, float | int | str]:
        return asdict(self)


MAX_RECONSTRUCTION_K = 120
"""Largest k the search tries with reconstruction weights, unless the grid
holds no other choice: their neighbours' inner products take ``4 * k * k``
bytes a query, 1.3 GB for 2,000 queries at k = 400."""

DEFAULT_GRID: dict[str, Sequence] = {
    "k": (5, 10, 20, 30, 50, 80, 120, 200, 400),
    # Each weighting with its parameter: the temperature of softmax, the ridge
    # of reconstruction; the other rules have none.
    "weighting": (
        ("softmax", 0.02),
        ("softmax", 0.05),
        ("softmax", 0.1),
        ("softmax", 0.2),
        ("similarity", None),
        ("rank", None),
        ("count", None),
        ("reconstruction", 1.0),
        ("reconstruction", 2.0),
        ("reconstruction", 4.0),
        ("reconstruction", 8.0),
    ),
    "popularity_correction": (0.0, 0.25, 0.5, 1.0),
    "projection_mix": (1.0, 0.5),
    "prototype_pull": (0.0, 0.75),
    "diversity": (0.0, 0.25, 0.5, 0.75),
}
"""Candidates searched by default: 4 search spaces (2 mixes x 2 pulls) x 4
corrections x 9 neighbour counts x 11 weightings, less reconstruction weights
above :data:`MAX_RECONSTRUCTION_K` neighbours: 1,456 settings, scored with
plain votes; then the winner's 4 diversities, listed from the least diverse
(the order in which a choice within the noise of the best is preferred)."""


@dataclass
class TuningResult:
    """The winning setting, its threshold and every candidate's scores.

    Attributes:
        parameters: the setting with the best objective.
        threshold: score a hashtag needs to be suggested in a variable-length
            answer (the best one is always suggested).
        objective: the winner's mean of P@1, R@5 and A@5 over the folds,
            with its diversity.
        candidates: one dictionary per setting of the first search (plain
            votes, diversity 0), with ``P@1``, ``R@5``, ``A@5`` and
            ``objective`` beside the parameters, best first.
        diversities: the winning setting at each diversity of the grid, in
            the grid's order, with its ``P@1``, ``R@5``, ``A@5`` and
            ``objective``.
    """

    parameters: VotingParameters
    threshold: float
    objective: float
    candidates: list[dict] = field(default_factory=list)
    diversities: list[dict] = field(default_factory=list)

    @property
    def chosen(self) -> dict:
        """The chosen setting with its cross-validated scores."""
        scores = next(
            (
                row
                for row in self.diversities
                if row["diversity"] == self.parameters.diversity
            ),
            None,
        )
        if scores is None:
            raise ValueError(
                f"no cross-validated scores for diversity "
                f"{self.parameters.diversity!r} among the result's diversities"
            )
        return {**self.parameters.as_settings(), **scores}


def tune_voting(
    embeddings: np.ndarray,
    labels: sp.spmatrix,
    *,
    folds: int = 5,
    seed: int = 0,
    grid: dict[str, Sequence] | None = None,
    max_queries: int = 2000,
) -> TuningResult:
    """Pick the voting setting that scores best in cross-validation.

    Args:
        embeddings: ``(n, d) float32`` unit rows of the photos to tune on (the
            training photos only).
        labels: ``(n, n_tags)`` 0/1 matrix of their hashtags.
        folds: number of folds, at least 2.
        seed: seed of the fold split and of the query sample.
        grid: candidates as :data:`DEFAULT_GRID`; neighbour counts larger than
            a fold's index are dropped.
        max_queries: at most this many photos of each fold are used as
            queries, which bounds the time on large collections.

    Returns:
        A :class:`TuningResult`.

    Raises:
        ValueError: fewer than ``2 * folds`` photos, an unknown grid entry, an
            entry that is not a list of choices or holds none, a k that is not
            a whole number >= 1, a ``projection_mix`` outside ``(0, 1]``, a
            ``prototype_pull`` outside ``[0, 0.99]`` or a ``diversity``
            outside ``[0, 1)``.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    labels = sp.csr_matrix(labels, dtype=np.float32)
    n = embeddings.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"{labels.shape[0]} label rows for {n} embeddings")
    if folds < 2 or n < 2 * folds:
        raise ValueError(
            f"tuning needs at least 2 folds of 2 photos each; got {n} photos and "
            f"{folds} folds"
        )
    grid = _checked_grid(grid or {})
    smallest_index = n - -(-n // folds)
    ks = sorted(k for k in grid["k"] if k <= smallest_index) or [smallest_index]
    spaces = list(itertools.product(grid["projection_mix"], grid["prototype_pull"]))
    for mix, pull in spaces:
        # A mix of NaN or above 1 would be searched as the plain embeddings and
        # then reported, and saved, as the chosen value; so would such a pull.
        check_mix(mix)
        check_pull(pull)
    for diversity in grid["diversity"]:
        check_diversity(diversity)
    votes = list(itertools.product(ks, grid["weighting"]))
    # A k above the limit that the caller fixed is searched as given.
    votes = [
        (k, weighting)
        for k, weighting in votes
        if weighting[0] != "reconstruction" or k <= MAX_RECONSTRUCTION_K
    ] or votes
    gram_k = max(
        (k for k, (weighting, _) in votes if weighting == "reconstruction"),
        default=0,
    )
    candidates = [
        (space, k, weighting, alpha)
        for space, (k, weighting), alpha in itertools.product(
            spaces, votes, grid["popularity_correction"]
        )
    ]
    if not candidates:
        raise ValueError("the tuning grid holds no candidate")
    logger.info(
        "tuning voting on %d photos: %d settings x %d folds",
        n,
        len(candidates),
        folds,
    )

    positions = {candidate: i for i, candidate in enumerate(candidates)}
    rng = np.random.default_rng(seed)
    totals = np.zeros((len(candidates), 3))
    fold_data = []
    for train_ids, test_ids in fold_indices(n, folds, seed):
        if len(test_ids) > max_queries:
            test_ids = np.sort(rng.choice(test_ids, max_queries, replace=False))
        prior = tag_prior(labels[train_ids])
        truth = labels[test_ids].toarray() > 0
        fold_data.append((train_ids, test_ids))
        # One space searched at a time, and one share matrix at a time: at
        # HARRISON scale each is 2,000 x 997.
        for space in spaces:
            search = _search_fold(
                embeddings, labels, train_ids, test_ids, space, max(ks), gram_k
            )
            for k, weighting in votes:
                weights = _fold_weights(search, k, *weighting)
                share = weighted_votes(
                    weights, search.neighbours[:, :k], labels[train_ids]
                )
                for alpha in grid["popularity_correction"]:
                    position = positions[space, k, weighting, alpha]
                    totals[position] += _quick_metrics(
                        share - np.float32(alpha) * prior, truth
                    )

    means = totals / folds
    objectives = means.mean(axis=1)
    order = np.argsort(-objectives, kind="stable")
    table = []
    for position in order:
        space, k, (weighting, parameter), alpha = candidates[position]
        table.append(
            {
                **_parameters_of(space, k, weighting, parameter, alpha).as_settings(),
                "P@1": float(means[position, 0]),
                "R@5": float(means[position, 1]),
                "A@5": float(means[position, 2]),
                "objective": float(objectives[position]),
            }
        )
    best = table[0]
    parameters = VotingParameters(
        **{key: best[key] for key in VotingParameters.__dataclass_fields__}
    )
    diversities, position, threshold = _rank_and_threshold(
        parameters, grid["diversity"], fold_data, embeddings, labels
    )
    chosen = diversities[position]
    parameters = dataclasses.replace(parameters, diversity=chosen["diversity"])
    logger.info(
        "chose %s (P@1 %.3f, R@5 %.3f, A@5 %.3f in cross-validation), threshold %.3f",
        parameters,
        chosen["P@1"],
        chosen["R@5"],
        chosen["A@5"],
        threshold,
    )
    return TuningResult(parameters, threshold, chosen["objective"], table, diversities)


def _checked_grid(given: dict[str, Sequence]) -> dict[str, tuple]:
    """The default grid with the given entries in place, each a tuple of
    distinct choices in the order given.

    A choice listed twice would be scored twice into one total and win with
    twice its score, so repeats are dropped (0.0 and -0.0 are one choice).

    Raises:
        ValueError: naming an unknown entry, an entry that is a single value
            or empty, or a k that is not a whole number >= 1.
    """
    unknown = set(given) - set(DEFAULT_GRID)
    if unknown:
        raise ValueError(
            f"unknown tuning grid entries: {', '.join(sorted(unknown))}; the grid "
            f"has {', '.join(DEFAULT_GRID)}"
        )
    grid = {}
    for name, choices in {**DEFAULT_GRID, **given}.items():
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
            # ValueError as for values out of range: build reports both alike.
            raise ValueError(  # noqa: TRY004
                f"the tuning grid entry {name} must be a list of choices, got "
                f"{choices!r}"
            )
        grid[name] = tuple(dict.fromkeys(choices))
        if not grid[name]:
            raise ValueError(f"the tuning grid entry {name} holds no choice")
    for k in grid["k"]:
        check_number("k", k, whole=True)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k!r}")
    return grid


def _parameters_of(space, k, weighting, parameter, alpha) -> VotingParameters:
    """The setting of one grid point; ``space`` is ``(projection_mix,
    prototype_pull)`` and ``parameter`` the weighting's own."""
    mix, pull = space
    return VotingParameters(
        k=int(k),
        weighting=weighting,
        popularity_correction=float(alpha),
        projection_mix=float(mix),
        prototype_pull=float(pull),
        **_weighting_keywords(weighting, parameter),
    )


def _weighting_keywords(weighting: str, parameter) -> dict[str, float]:
    """``temperature`` and ``ridge`` of a grid weighting ``(weighting, parameter)``:
    the parameter is the temperature of softmax, the ridge of reconstruction."""
    return {
        "temperature": (
            float(parameter) if weighting == "softmax" else DEFAULT_TEMPERATURE
        ),
        "ridge": float(parameter) if weighting == "reconstruction" else DEFAULT_RIDGE,
    }


def select_by_threshold(
    scores: np.ndarray, threshold: float, *, most: int = 10
) -> list[np.ndarray]:
    """Hashtags each photo gets in a variable-length answer.

    Args:
        scores: ``(q, n_tags) float32``.
        threshold: a hashtag at or above it is suggested; the best hashtag of a
            photo always is.
        most: at most this many hashtags a photo.

    Returns:
        One ``int64`` array of hashtag ids per photo, best first.
    """
    tag_ids, tag_scores = rank_tags(scores, min(most, scores.shape[1]))
    keep = tag_scores >= threshold
    keep[:, 0] = True
    return [ids[kept] for ids, kept in zip(tag_ids, keep)]


@dataclass
class _FoldSearch:
    """One fold's queries searched in one space, up to the largest k."""

    similarities: np.ndarray
    neighbours: np.ndarray
    gram: np.ndarray | None


def _search_fold(embeddings, labels, train_ids, test_ids, space, k, gram_k):
    """Search a fold's queries among the other folds' photos in one space,
    ``(projection_mix, prototype_pull)``, for k neighbours, and keep the inner
    products of the first ``gram_k`` of them (none when 0).

    The projection and the prototypes, when there are any, are fitted on the
    other folds alone: fitted on the queries' own hashtags they would place
    the queries next to photos tagged alike and make the space look better
    than it is.
    """
    indexed, queries = embeddings[train_ids], embeddings[test_ids]
    mix, pull = space
    projection, prototypes = fit_search_space(
        indexed, labels[train_ids], mix=mix, pull=pull
    )
    if projection is not None:
        indexed, queries = projection.transform(indexed), projection.transform(queries)
    if prototypes is not None:
        indexed = prototypes.apply(indexed, labels[train_ids])
    index = faiss.IndexFlatIP(indexed.shape[1])
    index.add(indexed)
    similarities, neighbours = index.search(queries, k)
    gram = None
    if gram_k:
        gram = neighbour_gram(indexed, neighbours[:, :gram_k])
    return _FoldSearch(similarities, neighbours, gram)


def _fold_weights(search: _FoldSearch, k: int, weighting: str, parameter):
    """Neighbour weights of the k nearest under one weighting, ``(q, k)``."""
    sims = search.similarities[:, :k]
    ids = search.neighbours[:, :k]
    gram = None if search.gram is None else search.gram[:, :k, :k]
    return neighbour_weights(
        sims,
        ids >= 0,
        weighting=weighting,
        gram=gram,
        **_weighting_keywords(weighting, parameter),
    )


def _quick_metrics(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """P@1, R@5 and A@5 of one score matrix against a dense boolean truth
    (photos without tags count as misses)."""
    top, _ = rank_tags(scores, min(5, scores.shape[1]))
    hits = np.take_along_axis(truth, top, axis=1)
    n_true = np.maximum(truth.sum(axis=1), 1)
    return np.array(
        [hits[:, 0].mean(), (hits.sum(axis=1) / n_true).mean(), hits.any(axis=1).mean()]
    )


def _rank_and_threshold(parameters, diversities, fold_data, embeddings, labels):
    """Score the winning setting at each diversity on the out-of-fold votes,
    choose one, and find the threshold with the best mean per-photo F1 at it.

    Each fold is searched again in the winning space only: keeping every
    space's neighbour inner products from the search would hold about a
    gigabyte at HARRISON scale.

    Returns:
        ``(rows, chosen, threshold)``: one dictionary per diversity, in the
        order given, with ``diversity``, ``P@1``, ``R@5``, ``A@5`` and
        ``objective`` (means over the folds, as the search computes them);
        the position of the chosen one (see
        :func:`_least_diverse_within_noise`); and the threshold.
    """
    parameter = (
        parameters.ridge
        if parameters.weighting == "reconstruction"
        else parameters.temperature
    )
    gram_k = parameters.k if parameters.weighting == "reconstruction" else 0
    votes, all_truth = [], []
    for train_ids, test_ids in fold_data:
        search = _search_fold(
            embeddings,
            labels,
            train_ids,
            test_ids,
            (parameters.projection_mix, parameters.prototype_pull),
            parameters.k,
            gram_k,
        )
        weights = _fold_weights(search, parameters.k, parameters.weighting, parameter)
        votes.append((weights, search.neighbours[:, : parameters.k], train_ids))
        all_truth.append(labels[test_ids].toarray() > 0)

    def fold_scores(diversity):
        return [
            diversified_votes(
                weights,
                neighbours,
                labels[train_ids],
                diversity=diversity,
                popularity_correction=parameters.popularity_correction,
            )
            for weights, neighbours, train_ids in votes
        ]

    rows, fold_objectives = [], []
    for diversity in diversities:
        metrics = np.array(
            [_quick_metrics(s, t) for s, t in zip(fold_scores(diversity), all_truth)]
        )
        means = metrics.mean(axis=0)
        fold_objectives.append(metrics.mean(axis=1))
        rows.append(
            {
                "diversity": float(diversity),
                "P@1": float(means[0]),
                "R@5": float(means[1]),
                "A@5": float(means[2]),
                "objective": float(means.mean()),
            }
        )
    chosen = _least_diverse_within_noise(np.array(fold_objectives))
    # Voted again rather than kept from the loop: keeping every diversity's
    # scores would hold 160 MB at HARRISON scale, for one more round of votes.
    threshold = _best_threshold(fold_scores(diversities[chosen]), all_truth)
    return rows, chosen, threshold


def _least_diverse_within_noise(fold_objectives: np.ndarray) -> int:
    """The first choice whose objective is within one standard error of the
    best's: the one-standard-error rule of model selection.

    Args:
        fold_objectives: ``(choices, folds)`` objective of each choice on each
            fold, choices from the least diverse.

    The error is that of the per-fold differences to the best choice, whose
    folds share their queries: at HARRISON scale a gain of 0.2 points that
    every fold shows counts, while on a thousand photos a gain that one fold
    shows and another reverses does not move the ranking away from the
    plain one.
    """
    best = int(np.argmax(fold_objectives.mean(axis=1)))
    folds = fold_objectives.shape[1]
    for choice in range(best):
        gaps = fold_objectives[best] - fold_objectives[choice]
        error = gaps.std(ddof=1) / np.sqrt(folds) if folds > 1 else 0.0
        if gaps.mean() <= error:
            return choice
    return best


def _best_threshold(all_scores, all_truth) -> float:
    """The threshold with the best mean per-photo F1 over the given folds'
    ``(q, n_tags)`` scores and boolean truths."""
    scores = np.concatenate(all_scores)
    truth = np.concatenate(all_truth)
    top, top_scores = rank_tags(scores, min(10, scores.shape[1]))
    hits = np.take_along_axis(truth, top, axis=1)
    n_true = truth.sum(axis=1)

    candidates = np.unique(np.quantile(top_scores, np.linspace(0.0, 1.0, 101)))
    best_threshold, best_f1 = float(candidates[0]), -1.0
    for threshold in candidates:
        keep = top_scores >= threshold
        keep[:, 0] = True
        suggested = keep.sum(axis=1)
        correct = (hits & keep).sum(axis=1)
        f1 = np.mean(2 * correct / np.maximum(suggested + n_true, 1))
        if f1 > best_f1:
            best_threshold, best_f1 = float(threshold), float(f1)
    return best_threshold
