"""Similarity-weighted voting of nearest neighbours for hashtags.

A query photo's k nearest neighbours in the index each vote for their own
hashtags. A neighbour's vote is weighted by how similar it is to the query, and
the weights of one query sum to one, so a hashtag's score is the weighted share
of the neighbourhood that carries it: a number in ``[0, 1]`` that means the same
for every photo and every index. An optional popularity correction subtracts
part of the share that a random set of neighbours would give the hashtag, so
that hashtags carried by many photos do not win only because they are frequent.

The ``"reconstruction"`` weighting also looks at how the neighbours relate to
each other: it writes the query as a ridge-regularised combination of its
neighbours' vectors and lets each neighbour vote with its squared non-negative
coefficient. Ten near-copies of one photo then share the weight one of them
would get instead of outvoting a different photo that fits the query as well,
and a neighbour that explains part of the query the others miss gains weight.
It needs the inner products among the neighbours, ``(q, k, k)``, which
:meth:`harrison_knn.index.TagIndex.neighbour_gram` gives.

Plain votes rank each hashtag by its own share, so when most of the weight
sits on a few photos tagged alike, the first places all repeat one guess
(#beach #sea #sand #summer). :func:`diversified_votes` fills the places one at a
time instead: once a hashtag holds a place, every neighbour that carries it
votes with only ``1 - diversity`` of its weight for the places below, so the
hashtags of neighbours not yet explained move up. Precision@1 is unchanged
(the first place is the same), and a list of five is more often right at least
once.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = [
    "DEFAULT_DIVERSITY",
    "DEFAULT_K",
    "DEFAULT_RIDGE",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_WEIGHTING",
    "DIVERSITY_DEPTH",
    "WEIGHTINGS",
    "check_diversity",
    "check_ridge",
    "check_settings",
    "diversified_votes",
    "neighbour_gram",
    "neighbour_weights",
    "tag_prior",
    "vote",
    "weighted_votes",
]

logger = logging.getLogger(__name__)

WEIGHTINGS = ("softmax", "similarity", "rank", "count", "reconstruction")
DEFAULT_K = 20
DEFAULT_WEIGHTING = "softmax"
DEFAULT_TEMPERATURE = 0.05
DEFAULT_RIDGE = 1.0
DEFAULT_DIVERSITY = 0.0
DIVERSITY_DEPTH = 10
"""Places :func:`diversified_votes` fills one at a time: the most hashtags a
variable-length answer gives (:func:`harrison_knn.tuning.select_by_threshold`)
and the deepest cut-off the benchmark reports (Recall@10)."""


def neighbour_weights(
    similarities: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    weighting: str = DEFAULT_WEIGHTING,
    temperature: float = DEFAULT_TEMPERATURE,
    ridge: float = DEFAULT_RIDGE,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """Turn neighbour similarities into vote weights that sum to one per query.

    Args:
        similarities: ``(q, k) float32`` cosine similarities, each row sorted from
            the nearest neighbour to the farthest.
        valid: ``(q, k) bool``; False marks a slot with no neighbour (an index
            smaller than k, or an excluded photo). Such slots get weight 0.
        weighting: ``"softmax"`` (``exp(similarity / temperature)``),
            ``"similarity"`` (the similarity itself, floored at 0), ``"rank"``
            (``1 / rank``, rank 1 for the nearest; neighbours of equal
            similarity share the mean weight of their ranks) or ``"count"``
            (equal votes), or ``"reconstruction"`` (the squared non-negative
            coefficients ``c`` of ``(G + ridge * I) c = similarities``, with
            ``G`` the neighbours' inner products; see the module notes).
        temperature: softmax temperature, > 0; smaller trusts the nearest more.
        ridge: regularisation of the reconstruction, > 0; larger brings the
            weights closer to the squared similarities.
        gram: ``(q, k, k) float32`` inner products among each query's
            neighbours; needed by ``"reconstruction"`` only.

    Returns:
        ``(q, k) float32`` weights, each row summing to 1, or to 0 for a query
        with no valid neighbour.

    Raises:
        ValueError: unknown weighting, temperature or ridge not > 0, shapes that
            differ, or ``"reconstruction"`` without ``gram``.
    """
    similarities = np.asarray(similarities, dtype=np.float32)
    if similarities.ndim != 2:
        raise ValueError(
            f"similarities must be a (queries, k) array, got shape {similarities.shape}"
        )
    if valid is None:
        valid = np.ones(similarities.shape, dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != similarities.shape:
        raise ValueError(
            f"valid has shape {valid.shape} but similarities has {similarities.shape}"
        )
    if weighting not in WEIGHTINGS:
        raise ValueError(
            f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    check_ridge(ridge)

    if weighting == "softmax":
        # Subtracting each row's largest valid similarity keeps exp() finite.
        masked = np.where(valid, similarities, -np.inf)
        top = masked.max(axis=1, keepdims=True)
        top[~np.isfinite(top)] = 0.0
        raw = np.exp((masked - top) / np.float32(temperature))
    elif weighting == "similarity":
        raw = np.clip(similarities, 0.0, None)
    elif weighting == "rank":
        raw = _rank_weights(similarities)
    elif weighting == "reconstruction":
        raw = _reconstruction_weights(similarities, valid, gram, ridge)
    else:
        raw = np.ones(similarities.shape, dtype=np.float32)
    raw = np.where(valid, raw, 0.0).astype(np.float32)

    totals = raw.sum(axis=1, keepdims=True)
    # A row of zero total (no valid neighbour, or only dissimilar ones under
    # "similarity") falls back to equal votes among its valid neighbours.
    empty = (totals[:, 0] <= 0) & valid.any(axis=1)
    if empty.any():
        raw[empty] = valid[empty].astype(np.float32)
        totals[empty] = raw[empty].sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = np.where(totals > 0, raw / totals, 0.0)
    return weights.astype(np.float32)


def check_settings(settings: Mapping[str, Any]) -> None:
    """Refuse voting settings out of range, naming the setting and its value.

    Args:
        settings: any of ``k``, ``weighting``, ``temperature``,
            ``popularity_correction``, ``ridge`` and ``diversity``; other names
            are left to the caller.

    Raises:
        ValueError: the first setting out of range or not a number.
    """
    for name in ("k", "temperature", "popularity_correction", "ridge", "diversity"):
        if name in settings:
            check_number(name, settings[name], whole=name == "k")
    if "k" in settings and not settings["k"] >= 1:
        raise ValueError(f"k must be at least 1, got {settings['k']!r}")
    if "weighting" in settings and settings["weighting"] not in WEIGHTINGS:
        raise ValueError(
            f"unknown weighting {settings['weighting']!r}; choose one of "
            f"{', '.join(WEIGHTINGS)}"
        )
    if "temperature" in settings and not 0 < settings["temperature"] < np.inf:
        raise ValueError(
            f"temperature must be a finite number > 0, got {settings['temperature']!r}"
        )
    correction = settings.get("popularity_correction", 0.0)
    if not 0.0 <= correction <= 1.0:
        raise ValueError(
            f"popularity_correction must lie in [0, 1], got {correction!r}"
        )
    if "ridge" in settings:
        check_ridge(settings["ridge"])
    if "diversity" in settings:
        check_diversity(settings["diversity"])


def check_number(name: str, value: Any, *, whole: bool = False) -> None:
    """Refuse a setting that is not a real number (a whole one if ``whole``),
    naming it: a string or None would otherwise fail a comparison with a
    message that does not say which setting, and a bool would pass as 0 or 1.

    Raises:
        ValueError: naming the setting and the value.
    """
    kind = numbers.Integral if whole else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        wanted = "a whole number" if whole else "a number"
        # ValueError as for values out of range: callers report both alike.
        raise ValueError(f"{name} must be {wanted}, got {value!r}")  # noqa: TRY004


def check_ridge(ridge: float) -> None:
    """Refuse a ridge (reconstruction or projection) not a finite number > 0.

    Raises:
        ValueError: naming the value.
    """
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge!r}")
    if not np.isfinite(ridge):
        # An infinite ridge makes every coefficient NaN, which would silently
        # give every neighbour weight 0 and every hashtag score 0.
        raise ValueError(f"ridge must be a finite number, got {ridge!r}")


def check_diversity(diversity: float) -> None:
    """Refuse a diversity that is not a number in ``[0, 1)``.

    At 1 a neighbour would lose its whole vote once one of its hashtags holds
    a place, and its other hashtags would drop out of the answer.

    Raises:
        ValueError: naming the value.
    """
    check_number("diversity", diversity)
    if not 0.0 <= diversity < 1.0:
        raise ValueError(f"diversity must lie in [0, 1), got {diversity!r}")


def _reconstruction_weights(
    similarities: np.ndarray, valid: np.ndarray, gram: np.ndarray | None, ridge: float
) -> np.ndarray:
    """Squared non-negative ridge coefficients of the query on its neighbours.

    Minimising ``|x - sum_j c_j n_j|^2 + ridge * |c|^2`` over the coefficients
    ``c`` gives ``(G + ridge * I) c = s`` with ``G`` the neighbours' inner
    products and ``s`` their similarities to the query ``x``. Empty slots are
    cut out of the system by giving them a unit row and a zero right-hand side.
    """
    if gram is None:
        raise ValueError(
            'the "reconstruction" weighting needs the inner products among the '
            "neighbours (gram)"
        )
    n_queries, k = similarities.shape
    gram = np.asarray(gram)
    if gram.shape != (n_queries, k, k):
        raise ValueError(f"gram must have shape {(n_queries, k, k)}, got {gram.shape}")
    coefficients = np.zeros((n_queries, k), dtype=np.float64)
    # Chunks of queries bound the float64 systems to about 64 MB at any k.
    step = max(1, (8 << 20) // (k * k))
    for start in range(0, n_queries, step):
        rows = slice(start, start + step)
        ok = valid[rows]
        both = ok[:, :, None] & ok[:, None, :]
        system = np.where(both, gram[rows].astype(np.float64), 0.0)
        system += np.eye(k) * np.where(ok, ridge, 1.0)[:, None, :]
        target = np.where(ok, similarities[rows], 0.0).astype(np.float64)
        coefficients[rows] = np.linalg.solve(system, target[:, :, None])[:, :, 0]
    return np.square(np.clip(coefficients, 0.0, None)).astype(np.float32)


def neighbour_gram(vectors: np.ndarray, neighbour_ids: np.ndarray) -> np.ndarray:
    """Inner products among each query's neighbours, for ``"reconstruction"``.

    Args:
        vectors: ``(n, d) float32`` rows of the searched index.
        neighbour_ids: ``(q, k) int64`` rows of each query's neighbours; ``-1``
            slots get zero rows and columns.

    Returns:
        ``(q, k, k) float32``.

    Raises:
        ValueError: ids not a ``(q, k)`` array, or a row outside ``vectors``.
    """
    neighbour_ids = np.asarray(neighbour_ids, dtype=np.int64)
    if neighbour_ids.ndim != 2:
        raise ValueError(
            f"neighbour_ids must be a (queries, k) array, got shape "
            f"{neighbour_ids.shape}"
        )
    if neighbour_ids.size and neighbour_ids.max() >= len(vectors):
        raise ValueError(
            f"row {int(neighbour_ids.max())} is outside the index of "
            f"{len(vectors)} photos"
        )
    gram = np.zeros(neighbour_ids.shape + neighbour_ids.shape[1:], dtype=np.float32)
    if len(vectors) == 0:
        # An empty index: every slot is -1, and there is no row to gather.
        return gram
    # Chunks of queries keep the gathered rows near 128 MB at any width: all
    # 5,000 test queries of the HARRISON benchmark at once would take 3.6 GB.
    step = max(1, (32 << 20) // max(1, neighbour_ids.shape[1] * vectors.shape[1]))
    for start in range(0, len(neighbour_ids), step):
        ids = neighbour_ids[start : start + step]
        rows = vectors[np.where(ids >= 0, ids, 0)]
        rows[ids < 0] = 0.0
        gram[start : start + step] = np.matmul(rows, rows.transpose(0, 2, 1))
    return gram


def _rank_weights(similarities: np.ndarray) -> np.ndarray:
    """``1 / rank`` of each neighbour, ``(q, k) float32``; ties share their mean.

    The search returns neighbours of equal similarity (duplicate photos) in an
    order of its own; averaging the weights of the ranks a tie occupies makes
    the vote independent of that order. Rows must be sorted nearest first, so
    that tied neighbours sit side by side.
    """
    n_queries, k = similarities.shape
    raw = np.broadcast_to(1.0 / np.arange(1, k + 1, dtype=np.float64), (n_queries, k))
    starts = np.ones((n_queries, k), dtype=bool)
    starts[:, 1:] = similarities[:, 1:] != similarities[:, :-1]
    groups = np.cumsum(starts, axis=1) - 1 + k * np.arange(n_queries)[:, None]
    sums = np.bincount(groups.ravel(), weights=raw.ravel(), minlength=n_queries * k)
    counts = np.bincount(groups.ravel(), minlength=n_queries * k)
    return (sums / np.maximum(counts, 1))[groups].astype(np.float32)


def tag_prior(labels: sp.spmatrix | np.ndarray) -> np.ndarray:
    """Share of indexed photos that carry each hashtag.

    This is the expected score of a hashtag when the neighbours are drawn at
    random from the index, the quantity the popularity correction removes.

    Args:
        labels: ``(n_photos, n_tags)`` 0/1 matrix, sparse or dense.

    Returns:
        ``(n_tags,) float32`` in ``[0, 1]``.
    """
    n_photos = labels.shape[0]
    if n_photos == 0:
        return np.zeros(labels.shape[1], dtype=np.float32)
    counts = np.asarray(labels.sum(axis=0)).ravel()
    return (counts / n_photos).astype(np.float32)


def vote(
    similarities: np.ndarray,
    neighbour_ids: np.ndarray,
    labels: sp.csr_matrix,
    *,
    weighting: str = DEFAULT_WEIGHTING,
    temperature: float = DEFAULT_TEMPERATURE,
    popularity_correction: float = 0.0,
    prior: np.ndarray | None = None,
    ridge: float = DEFAULT_RIDGE,
    gram: np.ndarray | None = None,
    diversity: float = DEFAULT_DIVERSITY,
) -> np.ndarray:
    """Score every hashtag for every query by weighted neighbour votes.

    Args:
        similarities: ``(q, k) float32`` similarities of each query's neighbours,
            nearest first.
        neighbour_ids: ``(q, k) int64`` row numbers of those neighbours in
            ``labels``; ``-1`` marks an empty slot, which casts no vote.
        labels: ``(n_photos, n_tags)`` 0/1 CSR matrix of the indexed photos.
        weighting, temperature, ridge, gram: see :func:`neighbour_weights`.
        popularity_correction: ``alpha`` in ``[0, 1]``; the score becomes
            ``share - alpha * prior``. 0 gives the plain weighted share.
        prior: ``(n_tags,) float32`` expected share under random neighbours;
            computed from ``labels`` when needed and not given.
        diversity: in ``[0, 1)``; above 0 the scores are those of
            :func:`diversified_votes`.

    Returns:
        ``(q, n_tags) float32`` scores. Without correction each lies in
        ``[0, 1]``; with it, in ``[-alpha, 1]``.

    Raises:
        ValueError: shapes that do not match, ids outside the index, or a
            correction or diversity out of range.
    """
    neighbour_ids = np.asarray(neighbour_ids)
    similarities = np.asarray(similarities, dtype=np.float32)
    if neighbour_ids.shape != similarities.shape:
        raise ValueError(
            f"neighbour_ids has shape {neighbour_ids.shape} but similarities has "
            f"{similarities.shape}"
        )
    valid = neighbour_ids >= 0
    weights = neighbour_weights(
        similarities,
        valid,
        weighting=weighting,
        temperature=temperature,
        ridge=ridge,
        gram=gram,
    )
    return diversified_votes(
        weights,
        neighbour_ids,
        labels,
        diversity=diversity,
        popularity_correction=popularity_correction,
        prior=prior,
    )


def weighted_votes(
    weights: np.ndarray,
    neighbour_ids: np.ndarray,
    labels: sp.csr_matrix,
    *,
    popularity_correction: float = 0.0,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """Hashtag scores from neighbour weights already computed.

    Args:
        weights: ``(q, k) float32`` from :func:`neighbour_weights`.
        neighbour_ids, labels, popularity_correction, prior: as for
            :func:`vote`.

    Returns:
        ``(q, n_tags) float32`` scores, as :func:`vote` returns them.

    Raises:
        ValueError: weights and ids of other shapes, ids outside the index, or
            a correction outside ``[0, 1]``.
    """
    n_photos, n_tags = labels.shape
    weights = np.asarray(weights, dtype=np.float32)
    neighbour_ids = np.asarray(neighbour_ids)
    if weights.ndim != 2 or neighbour_ids.shape != weights.shape:
        raise ValueError(
            f"neighbour_ids has shape {neighbour_ids.shape} but weights has "
            f"{weights.shape}; both must be (queries, k)"
        )
    if neighbour_ids.size and neighbour_ids.max() >= n_photos:
        raise ValueError(
            f"neighbour id {int(neighbour_ids.max())} is outside the index of "
            f"{n_photos} photos"
        )
    check_number("popularity_correction", popularity_correction)
    if not 0.0 <= popularity_correction <= 1.0:
        raise ValueError(
            f"popularity_correction must lie in [0, 1], got {popularity_correction!r}"
        )
    valid = neighbour_ids >= 0

    n_queries, k = weights.shape
    rows = np.repeat(np.arange(n_queries), k)[valid.ravel()]
    columns = neighbour_ids[valid]
    # Sparse weights times sparse labels: the cost grows with the votes cast,
    # not with the number of indexed photos. Empty slots make no entry, so an
    # empty index needs no column.
    weight_matrix = sp.csr_matrix(
        (weights[valid], (rows, columns)), shape=(n_queries, n_photos)
    )
    scores = np.asarray((weight_matrix @ labels).todense(), dtype=np.float32)
    # Float32 rounding can put a share that should be exactly 1 (every voter
    # carries the hashtag) one step above it.
    np.minimum(scores, np.float32(1.0), out=scores)

    if popularity_correction > 0:
        if prior is None:
            prior = tag_prior(labels)
        prior = np.asarray(prior, dtype=np.float32)
        if prior.shape != (n_tags,):
            raise ValueError(f"prior must have shape ({n_tags},), got {prior.shape}")
        scores -= np.float32(popularity_correction) * prior
    return scores


def diversified_votes(
    weights: np.ndarray,
    neighbour_ids: np.ndarray,
    labels: sp.csr_matrix,
    *,
    diversity: float,
    popularity_correction: float = 0.0,
    prior: np.ndarray | None = None,
    depth: int = DIVERSITY_DEPTH,
) -> np.ndarray:
    """Hashtag scores whose first places cover different neighbours.

    The first ``depth`` places are filled one at a time. Each goes to the
    hashtag with the best score (ties to the lower hashtag id, as
    :func:`harrison_knn.metrics.rank_tags` breaks them); then every neighbour
    that carries it keeps ``1 - diversity`` of its weight, once however many
    of its hashtags hold places, and the scores are voted again. A placed
    hashtag's score is its score when it took its place; the others keep
    their score after the last place. Scores only fall as neighbours lose
    weight, so sorting them gives back the order in which the places were
    filled, and each is still a share of the neighbourhood's weight less the
    popularity correction.

    Args:
        weights, neighbour_ids, labels, popularity_correction, prior: as for
            :func:`weighted_votes`.
        diversity: share of its weight a neighbour loses once one of its
            hashtags holds a place, in ``[0, 1)``; 0 gives
            :func:`weighted_votes` unchanged.
        depth: places filled one at a time, >= 0; each costs one more vote.

    Returns:
        ``(q, n_tags) float32`` scores.

    Raises:
        ValueError: a diversity outside ``[0, 1)``, a negative depth, or
            anything :func:`weighted_votes` refuses.
    """
    check_diversity(diversity)
    check_number("popularity_correction", popularity_correction)
    check_number("depth", depth, whole=True)
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth!r}")
    labels = sp.csr_matrix(labels)
    if prior is None and popularity_correction > 0:
        prior = tag_prior(labels)

    def scores_for(neighbour_weights: np.ndarray) -> np.ndarray:
        return weighted_votes(
            neighbour_weights,
            neighbour_ids,
            labels,
            popularity_correction=popularity_correction,
            prior=prior,
        )

    weights = np.asarray(weights, dtype=np.float32)
    scores = scores_for(weights)
    n_queries, n_tags = scores.shape
    places = min(depth, n_tags)
    if diversity == 0 or n_queries == 0 or places == 0:
        return scores

    # The hashtags of every filled neighbour slot, one CSR row a slot (slots
    # numbered row by row over the (q, k) ids); an empty index fills none.
    slot_ids = np.asarray(neighbour_ids).reshape(-1)
    filled = np.flatnonzero(slot_ids >= 0)
    slot_labels = labels[slot_ids[filled]]
    entry_slot = np.repeat(filled, np.diff(slot_labels.indptr))
    carried = slot_labels.data > 0
    k = weights.shape[1]

    result = np.empty_like(scores)
    unplaced = np.ones((n_queries, n_tags), dtype=bool)
    keep = np.ones(n_queries * k, dtype=np.float32)
    rows = np.arange(n_queries)
    for _ in range(places):
        best = np.where(unplaced, scores, -np.inf).argmax(axis=1)
        result[rows, best] = scores[rows, best]
        unplaced[rows, best] = False
        placed_tag = best[entry_slot // k]
        keep[entry_slot[carried & (slot_labels.indices == placed_tag)]] = np.float32(
            1.0 - diversity
        )
        scores = scores_for(weights * keep.reshape(n_queries, k))
    result[unplaced] = scores[unplaced]
    return result
