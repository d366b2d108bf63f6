"""Choosing voting parameters by cross-validation on the indexed photos only.

The search splits the photos it is given into folds; each fold's photos query
an index of the other folds' photos, and every candidate setting of the
neighbour count, the weighting, its temperature and the popularity correction
is scored on them. The setting with the best mean of Precision@1, Recall@5 and
Accuracy@5 wins. Given only a build's training photos, nothing held out for
testing is ever seen, so scores measured afterwards on held-out photos are
honest (the search is nested inside any outer evaluation).

A score threshold for variable-length answers is calibrated the same way: on
the out-of-fold scores of the winning setting, the threshold that gives the
best mean F1 between a photo's suggested set and its true hashtags.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np
import scipy.sparse as sp

from .dataset import fold_indices
from .metrics import rank_tags
from .voting import neighbour_weights, tag_prior

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
    """One voting setting; the keyword arguments of :func:`voting.vote`."""

    k: int
    weighting: str
    temperature: float
    popularity_correction: float

    def as_settings(self) -> dict[str, float | int | str]:
        return asdict(self)


DEFAULT_GRID: dict[str, Sequence] = {
    "k": (5, 10, 20, 30, 50, 80, 120),
    # Softmax at several temperatures, and the three temperature-free rules.
    "weighting": (
        ("softmax", 0.02),
        ("softmax", 0.05),
        ("softmax", 0.1),
        ("softmax", 0.2),
        ("similarity", 0.1),
        ("rank", 0.1),
        ("count", 0.1),
    ),
    "popularity_correction": (0.0, 0.25, 0.5, 1.0),
}
"""Candidates searched by default: 7 neighbour counts x 7 weightings x 4
corrections."""


@dataclass
class TuningResult:
    """The winning setting, its threshold and every candidate's scores.

    Attributes:
        parameters: the setting with the best objective.
        threshold: score a hashtag needs to be suggested in a variable-length
            answer (the best one is always suggested).
        objective: the winner's mean of P@1, R@5 and A@5 over the folds.
        candidates: one dictionary per setting, with ``P@1``, ``R@5``, ``A@5``
            and ``objective`` beside the parameters, best first.
    """

    parameters: VotingParameters
    threshold: float
    objective: float
    candidates: list[dict] = field(default_factory=list)


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
        ValueError: fewer than ``2 * folds`` photos, or an empty grid.
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
    grid = {**DEFAULT_GRID, **(grid or {})}
    smallest_index = n - -(-n // folds)
    ks = sorted(k for k in grid["k"] if k <= smallest_index) or [smallest_index]
    candidates = list(
        itertools.product(ks, grid["weighting"], grid["popularity_correction"])
    )
    if not candidates:
        raise ValueError("the tuning grid holds no candidate")
    logger.info(
        "tuning voting on %d photos: %d settings x %d folds",
        n,
        len(candidates),
        folds,
    )

    rng = np.random.default_rng(seed)
    totals = np.zeros((len(candidates), 3))
    fold_data = []
    for train_ids, test_ids in fold_indices(n, folds, seed):
        if len(test_ids) > max_queries:
            test_ids = np.sort(rng.choice(test_ids, max_queries, replace=False))
        index = faiss.IndexFlatIP(embeddings.shape[1])
        index.add(embeddings[train_ids])
        similarities, neighbours = index.search(embeddings[test_ids], max(ks))
        fold_data.append((train_ids, test_ids, similarities, neighbours))
        shares = _shares_by_setting(
            similarities, neighbours, labels[train_ids], ks, grid["weighting"]
        )
        prior = tag_prior(labels[train_ids])
        truth = labels[test_ids]
        for position, (k, weighting, alpha) in enumerate(candidates):
            scores = shares[k, weighting] - np.float32(alpha) * prior
            totals[position] += _quick_metrics(scores, truth)

    means = totals / folds
    objectives = means.mean(axis=1)
    order = np.argsort(-objectives, kind="stable")
    table = []
    for position in order:
        k, (weighting, temperature), alpha = candidates[position]
        table.append(
            {
                "k": int(k),
                "weighting": weighting,
                "temperature": float(temperature),
                "popularity_correction": float(alpha),
                "P@1": float(means[position, 0]),
                "R@5": float(means[position, 1]),
                "A@5": float(means[position, 2]),
                "objective": float(objectives[position]),
            }
        )
    best = table[0]
    parameters = VotingParameters(
        k=best["k"],
        weighting=best["weighting"],
        temperature=best["temperature"],
        popularity_correction=best["popularity_correction"],
    )
    threshold = _calibrate_threshold(parameters, fold_data, labels)
    logger.info(
        "chose %s (P@1 %.3f, R@5 %.3f, A@5 %.3f in cross-validation), threshold %.3f",
        parameters,
        best["P@1"],
        best["R@5"],
        best["A@5"],
        threshold,
    )
    return TuningResult(parameters, threshold, best["objective"], table)


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


def _shares_by_setting(similarities, neighbours, labels, ks, weightings):
    """Plain weighted shares for every (k, weighting) pair, ``(q, n_tags)`` each."""
    shares = {}
    for k in ks:
        sims = similarities[:, :k]
        ids = neighbours[:, :k]
        valid = ids >= 0
        for weighting, temperature in weightings:
            weights = neighbour_weights(
                sims, valid, weighting=weighting, temperature=temperature
            )
            shares[k, (weighting, temperature)] = _weighted_shares(weights, ids, labels)
    return shares


def _weighted_shares(weights, ids, labels) -> np.ndarray:
    rows = np.repeat(np.arange(weights.shape[0]), weights.shape[1])
    columns = np.where(ids >= 0, ids, 0).ravel()
    matrix = sp.csr_matrix(
        (weights.ravel(), (rows, columns)), shape=(weights.shape[0], labels.shape[0])
    )
    return np.asarray((matrix @ labels).todense(), dtype=np.float32)


def _quick_metrics(scores: np.ndarray, truth: sp.csr_matrix) -> np.ndarray:
    """P@1, R@5 and A@5 of one score matrix (photos without tags count as misses)."""
    top, _ = rank_tags(scores, min(5, scores.shape[1]))
    dense_truth = truth.toarray() > 0
    hits = np.take_along_axis(dense_truth, top, axis=1)
    n_true = np.maximum(dense_truth.sum(axis=1), 1)
    return np.array(
        [hits[:, 0].mean(), (hits.sum(axis=1) / n_true).mean(), hits.any(axis=1).mean()]
    )


def _calibrate_threshold(parameters, fold_data, labels) -> float:
    """The threshold with the best mean per-photo F1 on out-of-fold scores."""
    from .voting import vote

    all_scores, all_truth = [], []
    for train_ids, test_ids, similarities, neighbours in fold_data:
        k = parameters.k
        all_scores.append(
            vote(
                similarities[:, :k],
                neighbours[:, :k],
                labels[train_ids],
                weighting=parameters.weighting,
                temperature=parameters.temperature,
                popularity_correction=parameters.popularity_correction,
            )
        )
        all_truth.append(labels[test_ids].toarray() > 0)
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
