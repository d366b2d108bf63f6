"""HARRISON metrics for ranked hashtag suggestions.

Every metric reads a score matrix and the true hashtags of the same photos:

- ``scores``: ``(n_photos, n_tags)`` floating point, higher is better. A photo's
  hashtags are ranked by descending score; equal scores are ranked by the lower
  hashtag id, so every ranking, and so every metric, is deterministic.
  ``-inf`` is a valid score (a hashtag that is never suggested); NaN is not.
- ``truth``: ``(n_photos, n_tags)`` 0/1, a ``scipy.sparse`` matrix or a dense
  array.

The definitions follow the HARRISON benchmark paper (Park et al., 2017):

- ``P@k``: the share of a photo's top ``k`` suggestions that are true, averaged
  over all photos. ``P@1`` is the share of photos whose first hashtag is true.
- ``R@k``: the share of a photo's true hashtags found in its top ``k``,
  averaged over the photos that have at least one true hashtag.
- ``A@k``: the share of photos with at least one true hashtag in the top ``k``.
- ``F1@k``: per photo, the harmonic mean of its ``P@k`` and ``R@k``
  (``2 * hits / (k + n_true)``), averaged over the photos that have at least
  one true hashtag. It is computed per photo, not from the averaged ``P@k`` and
  ``R@k``, so that one photo's good precision cannot make up for another
  photo's poor recall.
- ``mAP``: the average precision of a photo's full ranking, averaged over the
  photos that have at least one true hashtag.

All values are fractions in ``[0, 1]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from numbers import Integral

import numpy as np
import scipy.sparse as sp

__all__ = [
    "STANDARD_KS",
    "accuracy_at_k",
    "evaluate",
    "f1_at_k",
    "mean_average_precision",
    "precision_at_k",
    "rank_tags",
    "recall_at_k",
]

logger = logging.getLogger(__name__)

STANDARD_KS: dict[str, tuple[int, ...]] = {
    "P": (1, 3, 5),
    "R": tuple(range(1, 11)),
    "A": (5,),
    "F1": (5,),
}
"""The cut-offs ``evaluate`` reports by default, by metric prefix."""

# Rows of the full ranking handled at once by ``mean_average_precision``, so
# that memory stays bounded (about 8 bytes times this times n_tags).
_RANKING_ROWS = 4096


def rank_tags(scores: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` best hashtags of each photo, best first.

    Hashtags are ordered by descending score; equal scores are ordered by the
    lower hashtag id, including at the cut-off (of three hashtags tied for the
    last two places, the two lowest ids are kept).

    Args:
        scores: ``(n_photos, n_tags)`` floating point, higher is better; no NaN.
        top: how many hashtags to return per photo, ``1 <= top <= n_tags``.

    Returns:
        ``(tag_ids, tag_scores)``: ``(n_photos, top) int64`` hashtag ids and
        their ``(n_photos, top) float32`` scores, best first.

    Raises:
        ValueError: if ``scores`` is not 2-D, holds NaN, or ``top`` is out of
            range.
    """
    scores = _check_scores(scores)
    n_photos, n_tags = scores.shape
    top = _check_k(top, n_tags, name="top")

    # Sort keys ascending: the negated scores, so the best hashtag comes first.
    keys = -scores
    if top == n_tags:
        tag_ids = np.argsort(keys, axis=1, kind="stable")
        return tag_ids, np.take_along_axis(scores, tag_ids, axis=1).astype(np.float32)
    cutoff = np.partition(keys, top - 1, axis=1)[:, top - 1 : top]

    # Everything strictly better than the cut-off is kept; of the hashtags tied
    # with it, only the lowest ids that still fit. Each row keeps exactly `top`.
    # Only the rows with more ties than places need the running count: done
    # for those alone, ranking takes about half the time (tuning ranks
    # thousands of score matrices).
    better = keys < cutoff
    tied = keys == cutoff
    free = top - np.count_nonzero(better, axis=1)
    chosen = better | tied
    crowded = np.flatnonzero(np.count_nonzero(tied, axis=1) > free)
    if len(crowded):
        rows = tied[crowded]
        places = np.cumsum(rows, axis=1, dtype=np.int32) <= free[crowded, None]
        chosen[crowded] = better[crowded] | (rows & places)
    # flatnonzero lists the kept cells row by row, ids increasing.
    tag_ids = (np.flatnonzero(chosen) % n_tags).reshape(n_photos, top)

    # Ids come in increasing order, so a stable sort by key breaks ties by the
    # lower id.
    chosen_keys = np.take_along_axis(keys, tag_ids, axis=1)
    order = np.argsort(chosen_keys, axis=1, kind="stable")
    tag_ids = np.take_along_axis(tag_ids, order, axis=1)
    tag_scores = np.take_along_axis(scores, tag_ids, axis=1).astype(np.float32)
    return tag_ids, tag_scores


def precision_at_k(
    scores: np.ndarray, truth: sp.spmatrix | np.ndarray, k: int
) -> float:
    """Share of the top ``k`` suggestions that are true, averaged over photos.

    Photos without any true hashtag count, with a precision of 0.

    Args:
        scores: ``(n_photos, n_tags)`` floating point, higher is better.
        truth: ``(n_photos, n_tags)`` 0/1, sparse or dense.
        k: the cut-off, ``1 <= k <= n_tags``.

    Returns:
        ``P@k`` in ``[0, 1]``.
    """
    hits, n_true = _top_hits(scores, truth, k)
    return _precision(hits, n_true, k)


def recall_at_k(scores: np.ndarray, truth: sp.spmatrix | np.ndarray, k: int) -> float:
    """Share of a photo's true hashtags in its top ``k``, averaged over photos.

    Only photos with at least one true hashtag are averaged.

    Args:
        scores: ``(n_photos, n_tags)`` floating point, higher is better.
        truth: ``(n_photos, n_tags)`` 0/1, sparse or dense.
        k: the cut-off, ``1 <= k <= n_tags``.

    Returns:
        ``R@k`` in ``[0, 1]``.

    Raises:
        ValueError: if no photo has a true hashtag.
    """
    hits, n_true = _top_hits(scores, truth, k)
    return _recall(hits, n_true, k)


def accuracy_at_k(scores: np.ndarray, truth: sp.spmatrix | np.ndarray, k: int) -> float:
    """Share of photos with at least one true hashtag in their top ``k``.

    Args:
        scores: ``(n_photos, n_tags)`` floating point, higher is better.
        truth: ``(n_photos, n_tags)`` 0/1, sparse or dense.
        k: the cut-off, ``1 <= k <= n_tags``.

    Returns:
        ``A@k`` in ``[0, 1]``.
    """
    hits, n_true = _top_hits(scores, truth, k)
    return _accuracy(hits, n_true, k)


def f1_at_k(scores: np.ndarray, truth: sp.spmatrix | np.ndarray, k: int) -> float:
    """Per-photo harmonic mean of ``P@k`` and ``R@k``, averaged over photos.

    A photo with ``h`` true hashtags among its top ``k`` and ``n`` true
    hashtags in all scores ``2 * h / (k + n)``. Only photos with at least one
    true hashtag are averaged, as for recall.

    Args:
        scores: ``(n_photos, n_tags)`` floating point, higher is better.
        truth: ``(n_photos, n_tags)`` 0/1, sparse or dense.
        k: the cut-off, ``1 <= k <= n_tags``.

    Returns:
        ``F1@k`` in ``[0, 1]``.

    Raises:
        ValueError: if no photo has a true hashtag.
    """
    hits, n_true = _top_hits(scores, truth, k)
    return _f1(hits, n_true, k)


def mean_average_precision(
    scores: np.ndarray, truth: sp.spmatrix | np.ndarray
) -> float:
    """Average precision of each photo's full ranking, averaged over photos.

    A photo's average precision is the mean, over its true hashtags, of the
    precision of the ranking cut just after that hashtag. Only photos with at
    least one true hashtag are averaged. On scores without ties this equals
    scikit-learn's ``label_ranking_average_precision_score``; with ties this
    function ranks by the lower id, where scikit-learn counts ties pessimistically.

    Args:
        scores: ``(n_photos, n_tags)`` floating point, higher is better.
        truth: ``(n_photos, n_tags)`` 0/1, sparse or dense.

    Returns:
        ``mAP`` in ``[0, 1]``.

    Raises:
        ValueError: if no photo has a true hashtag.
    """
    scores = _check_scores(scores)
    truth = _check_truth(truth, scores.shape)
    n_photos, n_tags = scores.shape
    n_true = truth.sum(axis=1)
    _require_true_tags(n_true)

    total = 0.0
    for start in range(0, n_photos, _RANKING_ROWS):
        stop = min(start + _RANKING_ROWS, n_photos)
        tag_ids, _ = rank_tags(scores[start:stop], n_tags)
        hits = np.take_along_axis(truth[start:stop], tag_ids, axis=1)
        precision = np.cumsum(hits, axis=1) / np.arange(1, n_tags + 1)
        kept = n_true[start:stop] > 0
        sums = (precision * hits).sum(axis=1)[kept]
        total += float((sums / n_true[start:stop][kept]).sum())
    return total / int((n_true > 0).sum())


def evaluate(
    scores: np.ndarray,
    truth: sp.spmatrix | np.ndarray,
    ks: Mapping[str, Sequence[int]] = STANDARD_KS,
) -> dict[str, float]:
    """The standard HARRISON metrics of a score matrix, by name.

    Args:
        scores: ``(n_photos, n_tags)`` floating point, higher is better.
        truth: ``(n_photos, n_tags)`` 0/1, sparse or dense.
        ks: cut-offs by metric prefix, any of ``"P"``, ``"R"``, ``"A"`` and
            ``"F1"``. The default gives ``P@1, P@3, P@5, R@1 .. R@10, A@5,
            F1@5``; every cut-off must be at most ``n_tags``.

    Returns:
        ``{"P@1": ..., "R@1": ..., "A@5": ..., "F1@5": ..., "mAP": ...}``, in
        the order of ``ks`` then ``mAP``; fractions in ``[0, 1]``.

    Raises:
        ValueError: on mismatched shapes, an unknown prefix, a cut-off out of
            range, or when no photo has a true hashtag.
    """
    scores = _check_scores(scores)
    truth = _check_truth(truth, scores.shape)
    n_tags = scores.shape[1]
    unknown = sorted(set(ks) - set(_FROM_HITS))
    if unknown:
        raise ValueError(
            f"unknown metric prefixes {unknown} in ks; use some of {sorted(_FROM_HITS)}"
        )
    checked = {
        prefix: [_check_k(k, n_tags, name=f"{prefix}@k") for k in values]
        for prefix, values in ks.items()
    }
    deepest = max((k for values in checked.values() for k in values), default=1)

    tag_ids, _ = rank_tags(scores, deepest)
    ranked_hits = np.take_along_axis(truth, tag_ids, axis=1)
    n_true = truth.sum(axis=1)

    results: dict[str, float] = {}
    for prefix, values in checked.items():
        for k in values:
            results[f"{prefix}@{k}"] = _FROM_HITS[prefix](ranked_hits[:, :k], n_true, k)
    results["mAP"] = mean_average_precision(scores, truth)
    logger.debug("evaluated %d photos x %d hashtags: %s", *scores.shape, results)
    return results


# Each metric from the ranked hits: (n_photos, k) bool, the true count of each
# photo (n_photos,) and the cut-off k.


def _precision(hits: np.ndarray, n_true: np.ndarray, k: int) -> float:
    return float(hits.sum(axis=1).mean() / k)


def _recall(hits: np.ndarray, n_true: np.ndarray, k: int) -> float:
    _require_true_tags(n_true)
    kept = n_true > 0
    return float((hits[kept].sum(axis=1) / n_true[kept]).mean())


def _accuracy(hits: np.ndarray, n_true: np.ndarray, k: int) -> float:
    return float(hits.any(axis=1).mean())


def _f1(hits: np.ndarray, n_true: np.ndarray, k: int) -> float:
    _require_true_tags(n_true)
    kept = n_true > 0
    return float((2.0 * hits[kept].sum(axis=1) / (k + n_true[kept])).mean())


_FROM_HITS = {"P": _precision, "R": _recall, "A": _accuracy, "F1": _f1}


def _top_hits(
    scores: np.ndarray, truth: sp.spmatrix | np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(n_photos, k) bool`` truth of the ranked top ``k``, and true counts."""
    scores = _check_scores(scores)
    truth = _check_truth(truth, scores.shape)
    k = _check_k(k, scores.shape[1], name="k")
    tag_ids, _ = rank_tags(scores, k)
    return np.take_along_axis(truth, tag_ids, axis=1), truth.sum(axis=1)


def _check_scores(scores: np.ndarray) -> np.ndarray:
    """``scores`` as a 2-D floating array (float32 unless already floating)."""
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float32)
    if scores.ndim != 2:
        raise ValueError(
            f"scores must be 2-D (n_photos, n_tags), got shape {scores.shape}"
        )
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must not be empty, got shape {scores.shape}")
    if np.isnan(scores).any():
        rows = np.unique(np.nonzero(np.isnan(scores))[0])
        raise ValueError(f"scores hold NaN in photo rows {rows[:10].tolist()}")
    return scores


def _check_truth(truth: sp.spmatrix | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``truth`` as a dense ``bool`` array of ``shape``, checked to be 0/1."""
    if sp.issparse(truth):
        values = truth.tocsr().data
        dense = truth.toarray()
    else:
        dense = np.asarray(truth)
        values = dense
    if dense.shape != shape:
        raise ValueError(
            f"truth has shape {dense.shape} but scores have shape {shape}; "
            "both must be (n_photos, n_tags)"
        )
    if not np.isin(values, (0, 1)).all():
        bad = np.unique(values[~np.isin(values, (0, 1))])
        raise ValueError(f"truth must hold only 0 and 1, found {bad[:5].tolist()}")
    return dense != 0


def _check_k(k: int, n_tags: int, *, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, Integral):
        raise TypeError(f"{name} must be an integer, got {k!r}")
    if not 1 <= k <= n_tags:
        raise ValueError(f"{name} must be between 1 and n_tags={n_tags}, got {k}")
    return int(k)


def _require_true_tags(n_true: np.ndarray) -> None:
    if not (n_true > 0).any():
        raise ValueError(
            f"none of the {len(n_true)} photos has a true hashtag; recall, F1 "
            "and mAP are undefined"
        )
