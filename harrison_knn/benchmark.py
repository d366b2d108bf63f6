"""Comparing hashtag suggesters on the same embeddings and the same splits.

Every method is a row of the comparison. A method is made by a factory of
:data:`METHODS` and has two verbs: ``fit(embeddings, labels)`` on the training
part of a split, and ``scores(embeddings)`` for the test part, returning
``(n_queries, n_tags) float32`` scores, higher is better. Every method sees the
same splits and is scored by :func:`harrison_knn.metrics.evaluate`; its cost is
measured the same way: fit time, queries per second for a batch, single-query
latency (the query's embedding given, so the encoder's time is not included)
and peak memory.

The embeddings come from a photo folder in HARRISON layout, through the
embedding cache of an index folder (so a second run embeds nothing), or, in
scale mode, are generated for the real HARRISON annotations (see
:func:`scale_embeddings`).

Command line: ``harrison-knn benchmark --help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from . import voting
from .build import embedding_keys, embedding_store_for
from .dataset import Collection, fold_indices, read_collection, split_indices
from .embedding import EmbeddingStore, embed_photos
from .encoders import DEFAULT_ENCODER, Encoder, create_encoder
from .heads import HEADS, fit_head, head_folder
from .index import TagIndex
from .linear import LogisticHead, TorchLinearHead
from .metric import fit_search_space
from .metrics import evaluate, rank_tags
from .suggester import TagSuggester
from .tuning import tune_voting

__all__ = [
    "BENCHMARK_KS",
    "BLEND_HEAD_WEIGHTS",
    "DEFAULT_METHODS",
    "METHODS",
    "BenchmarkResult",
    "BlendedMethod",
    "HeadMethod",
    "Method",
    "MethodFactory",
    "PopularityMethod",
    "TunedVotingMethod",
    "VotingMethod",
    "main",
    "plot_precision_recall",
    "run_benchmark",
    "scale_embeddings",
]

logger = logging.getLogger(__name__)

BENCHMARK_KS: dict[str, tuple[int, ...]] = {
    "P": tuple(range(1, 11)),
    "R": tuple(range(1, 11)),
    "A": (5,),
    "F1": (5,),
}
"""Cut-offs evaluated per split: the standard ones and P@k, R@k for k up to 10."""

QUALITY_COLUMNS = ("P@1", "P@3", "P@5", "A@5", "mAP", "F1@5")
RECALL_COLUMNS = tuple(f"R@{k}" for k in range(1, 11))
COST_COLUMNS = {
    "fit_seconds": "fit (s)",
    "queries_per_second": "queries/s (batch of 1,000)",
    "latency_ms": "latency (ms, 1 query)",
    "peak_memory_mib": "peak memory (MiB above start)",
}
SUGGESTED = 5
"""Hashtags ranked per query when timing: what ``suggest`` shows by default."""

SCALE_NOISE = 4.0
SCALE_WIDTH = 512
DEFAULT_FOLDS = 5
SCALE_TEST_PHOTOS = 5000


class Method(Protocol):
    """A hashtag suggester that the benchmark can fit and score."""

    def fit(self, embeddings: np.ndarray, labels: sp.csr_matrix) -> Method:
        """Learn from ``(n, d) float32`` unit rows and ``(n, n_tags)`` 0/1 labels."""
        ...

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """``(q, d) float32`` unit rows to ``(q, n_tags) float32``, higher better."""
        ...


MethodFactory = Callable[[], Method]
"""Makes a new, unfitted method; called once per split."""


class VotingMethod:
    """Neighbour voting through the code path ``suggest`` uses.

    ``fit`` builds a :class:`~harrison_knn.index.TagIndex` of the training
    photos (the FAISS add is its whole cost) and ``scores`` asks a
    :class:`~harrison_knn.suggester.TagSuggester` over it.

    Args:
        k, weighting, temperature, popularity_correction, ridge, diversity:
            see :func:`harrison_knn.voting.vote`.
        projection_mix: below 1, ``fit`` also fits a
            :class:`~harrison_knn.metric.LabelProjection` with this mix on the
            training photos and searches in its space.
        prototype_pull: above 0, ``fit`` also fits
            :class:`~harrison_knn.metric.TagPrototypes` with this pull on the
            training photos and stores them pulled toward their hashtags.
    """

    def __init__(
        self,
        k: int = voting.DEFAULT_K,
        weighting: str = voting.DEFAULT_WEIGHTING,
        temperature: float = voting.DEFAULT_TEMPERATURE,
        popularity_correction: float = 0.0,
        ridge: float = voting.DEFAULT_RIDGE,
        projection_mix: float = 1.0,
        prototype_pull: float = 0.0,
        diversity: float = voting.DEFAULT_DIVERSITY,
    ) -> None:
        self.k = k
        self.weighting = weighting
        self.temperature = temperature
        self.popularity_correction = popularity_correction
        self.ridge = ridge
        self.projection_mix = projection_mix
        self.prototype_pull = prototype_pull
        self.diversity = diversity

    def fit(self, embeddings: np.ndarray, labels: sp.csr_matrix) -> VotingMethod:
        n_photos, n_tags = labels.shape
        projection, prototypes = fit_search_space(
            embeddings, labels, mix=self.projection_mix, pull=self.prototype_pull
        )
        # The index wants names for display only; scores never read them.
        index = TagIndex.from_embeddings(
            embeddings,
            labels,
            vocabulary=[str(tag) for tag in range(n_tags)],
            paths=[str(photo) for photo in range(n_photos)],
            encoder="benchmark",
            projection=projection,
            prototypes=prototypes,
        )
        self.suggester_ = TagSuggester(
            index,
            k=self.k,
            weighting=self.weighting,
            temperature=self.temperature,
            popularity_correction=self.popularity_correction,
            ridge=self.ridge,
            diversity=self.diversity,
        )
        return self

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        scores, _, _ = self.suggester_.score(embeddings)
        return scores


class TunedVotingMethod:
    """Voting with its settings chosen by cross-validation inside ``fit``.

    ``fit`` runs :func:`harrison_knn.tuning.tune_voting` on the training part
    of the split alone, the same search ``harrison-knn build`` runs, then
    indexes it with the winning setting: the test part never takes part in
    the choice, so the scores are those of a nested cross-validation.

    Args:
        folds: inner folds of the search.
        max_queries: inner queries per fold at most (bounds the time at scale).
    """

    def __init__(self, folds: int = 5, max_queries: int = 2000) -> None:
        self.folds = folds
        self.max_queries = max_queries

    def fit(self, embeddings: np.ndarray, labels: sp.csr_matrix) -> TunedVotingMethod:
        self.tuning_ = tune_voting(
            embeddings, labels, folds=self.folds, max_queries=self.max_queries
        )
        self.voting_ = VotingMethod(**self.chosen_).fit(embeddings, labels)
        return self

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return self.voting_.scores(embeddings)

    @property
    def chosen_(self) -> dict[str, Any]:
        """The settings the search chose on this training part, for the record."""
        return self.tuning_.parameters.as_settings()


class HeadMethod:
    """A linear head of :mod:`harrison_knn.linear` as a benchmark method.

    Args:
        head: an unfitted ``LogisticHead`` or ``TorchLinearHead``.
    """

    def __init__(self, head: LogisticHead | TorchLinearHead) -> None:
        self.head = head

    def fit(self, embeddings: np.ndarray, labels: sp.csr_matrix) -> HeadMethod:
        self.head.fit(embeddings, labels)
        return self

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return self.head.predict_scores(embeddings)


BLEND_HEAD_WEIGHTS = tuple(round(0.1 * step, 1) for step in range(11))
"""Shares of the head's probabilities that :class:`BlendedMethod` tries."""


class BlendedMethod:
    """Tuned voting mixed with a linear head's probabilities: a combined row.

    A hashtag scores ``(1 - head_weight) * vote + head_weight * probability``:
    the vote of :class:`TunedVotingMethod` (a share of the neighbours, less
    the popularity correction) and the head's probability that the photo
    carries the hashtag lie on the same 0-to-1 scale. ``fit`` keeps a
    validation part of the training photos aside, tunes voting and fits the
    head on the rest, and picks ``head_weight`` from
    :data:`BLEND_HEAD_WEIGHTS` by the mean of P@1, R@5 and A@5 on the
    validation part (the first best, so ties go to the smaller share); it then
    indexes all the training photos with the tuned voting settings and fits
    the head on them again. The test part never takes part in a choice.

    Args:
        head: an unfitted ``LogisticHead`` or ``TorchLinearHead``; it is cloned
            for each of its two fits and is itself never fitted.
        validation_share: share of the training photos kept for choosing
            ``head_weight``, in ``(0, 1)``.
        seed: seeds that split.

    Attributes:
        head_weight_: the chosen share of the head.
        validation_objective_: ``{head_weight: mean of P@1, R@5, A@5}`` on the
            validation part.
        tuning_: the voting search's result on the rest of the training part.
        voting_: the :class:`VotingMethod` over all the training photos.
        head_: the head fitted on all the training photos.
    """

    def __init__(
        self,
        head: LogisticHead | TorchLinearHead,
        validation_share: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.head = head
        self.validation_share = validation_share
        self.seed = seed

    def fit(self, embeddings: np.ndarray, labels: sp.csr_matrix) -> BlendedMethod:
        """Choose the head's share on a validation part, then fit both on all.

        Raises:
            ValueError: a ``validation_share`` that is not a number in
                ``(0, 1)``, or too few photos to tune voting on the rest.
        """
        share = self.validation_share
        voting.check_number("validation_share", share)
        if not 0.0 < share < 1.0:
            raise ValueError(f"validation_share must lie in (0, 1), got {share!r}")
        labels = sp.csr_matrix(labels)
        part, validation = split_indices(len(embeddings), share, self.seed)
        tuned = TunedVotingMethod()
        if len(part) < 2 * tuned.folds:
            raise ValueError(
                f"the blend keeps {len(validation)} of {len(embeddings)} photos "
                f"aside to choose the head's share and tunes voting on the other "
                f"{len(part)}, but tuning needs at least {2 * tuned.folds}"
            )
        tuned.fit(embeddings[part], labels[part])
        head = clone(self.head).fit(embeddings[part], labels[part])
        votes = tuned.scores(embeddings[validation])
        probabilities = head.predict_proba(embeddings[validation])
        truth = labels[validation]
        self.validation_objective_ = {
            weight: _blend_objective(_blend(votes, probabilities, weight), truth)
            for weight in BLEND_HEAD_WEIGHTS
        }
        self.head_weight_ = max(
            BLEND_HEAD_WEIGHTS, key=self.validation_objective_.__getitem__
        )
        logger.info(
            "blend: head weight %.1f (validation mean of P@1, R@5, A@5 %.4f; "
            "voting alone %.4f, head alone %.4f)",
            self.head_weight_,
            self.validation_objective_[self.head_weight_],
            self.validation_objective_[0.0],
            self.validation_objective_[1.0],
        )

        self.tuning_ = tuned.tuning_
        self.voting_ = VotingMethod(**tuned.chosen_).fit(embeddings, labels)
        self.head_ = clone(self.head).fit(embeddings, labels)
        return self

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return _blend(
            self.voting_.scores(embeddings),
            self.head_.predict_proba(embeddings),
            self.head_weight_,
        )

    @property
    def chosen_(self) -> dict[str, Any]:
        """The head's share and the voting settings chosen on this training part."""
        settings = self.tuning_.parameters.as_settings()
        return {"head_weight": self.head_weight_, **settings}


def _blend(votes: np.ndarray, probabilities: np.ndarray, weight: float) -> np.ndarray:
    """``(q, n_tags) float32`` mix of votes and head probabilities."""
    return ((1.0 - weight) * votes + weight * probabilities).astype(np.float32)


def _blend_objective(scores: np.ndarray, truth: sp.csr_matrix) -> float:
    """Mean of P@1, R@5 and A@5, the objective voting is tuned by."""
    top = min(5, scores.shape[1])
    metrics = evaluate(scores, truth, {"P": (1,), "R": (top,), "A": (top,)})
    return (metrics["P@1"] + metrics[f"R@{top}"] + metrics[f"A@{top}"]) / 3


class PopularityMethod:
    """The floor: every photo gets the most frequent training hashtags."""

    def fit(self, embeddings: np.ndarray, labels: sp.csr_matrix) -> PopularityMethod:
        self.prior_ = voting.tag_prior(labels)
        return self

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        return np.tile(self.prior_, (len(embeddings), 1))


METHODS: dict[str, MethodFactory] = {
    "voting": VotingMethod,
    "tuned-voting": TunedVotingMethod,
    "logistic": lambda: HeadMethod(LogisticHead()),
    "torch-linear": lambda: HeadMethod(TorchLinearHead()),
    "popularity": PopularityMethod,
    "voting+logistic": lambda: BlendedMethod(LogisticHead()),
    "voting+torch": lambda: BlendedMethod(TorchLinearHead()),
}
"""Method name to factory: the rows of the comparison, in table order.

Add a row by adding a factory, e.g.
``METHODS["voting k=40"] = lambda: VotingMethod(k=40)``.
"""

DEFAULT_METHODS = ("voting", "tuned-voting", "logistic", "torch-linear", "popularity")
"""The rows ``harrison-knn benchmark`` runs unless ``--methods`` names others.

The combined rows (``voting+logistic``, ``voting+torch``) are left out: each
tunes voting and fits its head twice, which at HARRISON scale more than
doubles the run.
"""


@dataclass
class BenchmarkResult:
    """Every figure of a benchmark run.

    Attributes:
        splits: one row per method and split: ``method``, ``split``,
            ``n_train``, ``n_test``, every metric of :data:`BENCHMARK_KS` as a
            fraction, and the cost columns of :data:`COST_COLUMNS`.
        settings: what was compared and how (data, encoder, splits, ...).
    """

    splits: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """Method names in the order they were run."""
        return list(dict.fromkeys(self.splits["method"]))

    def summary(self) -> pd.DataFrame:
        """Mean and sample standard deviation over splits, per method.

        Returns:
            Rows by method (run order), columns a ``(figure, "mean"|"std")``
            MultiIndex; the std is NaN when there is one split.
        """
        figures = self.splits.drop(columns=["split", "n_train", "n_test"])
        summary = figures.groupby("method", sort=False).agg(["mean", "std"])
        return summary.loc[self.methods]

    def markdown_tables(self) -> str:
        """Quality, recall and cost tables in markdown, mean ± std over splits."""
        summary = self.summary()
        n_splits = self.splits.groupby("method", sort=False).size().iloc[0]
        spread = f"mean ± std over {n_splits} splits" if n_splits > 1 else "one split"
        parts = [
            f"Quality, % ({spread})",
            _markdown(_percent_table(summary, QUALITY_COLUMNS)),
            f"Recall@k, % ({spread})",
            _markdown(_percent_table(summary, RECALL_COLUMNS)),
            (
                f"Cost ({spread}; queries take their embedding as "
                f"given and include ranking the top {SUGGESTED} hashtags; one "
                "query runs on one thread, a batch on all)"
            ),
            _markdown(_cost_table(summary)),
        ]
        return "\n\n".join(parts) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Every figure, per split and summarised, as JSON-ready values."""
        summary = self.summary()
        by_method = {
            method: {
                figure: {
                    "mean": _json_number(summary.loc[method, (figure, "mean")]),
                    "std": _json_number(summary.loc[method, (figure, "std")]),
                }
                for figure in summary.columns.levels[0]
                if (figure, "mean") in summary.columns
            }
            for method in self.methods
        }
        return {
            "settings": self.settings,
            "methods": self.methods,
            "summary": by_method,
            "splits": [
                {name: _json_number(value) for name, value in row.items()}
                for row in self.splits.to_dict(orient="records")
            ],
        }


def run_benchmark(
    embeddings: np.ndarray,
    labels: sp.spmatrix,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    methods: Mapping[str, MethodFactory] | None = None,
    *,
    batch_queries: int = 1000,
    latency_queries: int = 50,
) -> BenchmarkResult:
    """Fit and score every method on every split.

    Args:
        embeddings: ``(n, d) float32``, unit rows.
        labels: ``(n, n_tags)`` 0/1, sparse or dense.
        splits: ``(train_ids, test_ids)`` pairs of int64 row numbers, e.g. from
            :func:`~harrison_knn.dataset.fold_indices`.
        methods: name to factory; :data:`METHODS` when None.
        batch_queries: size of the batch timed for queries per second; the
            test photos are repeated when there are fewer.
        latency_queries: single queries timed for the latency (the median),
            each on one thread.

    Returns:
        A :class:`BenchmarkResult` whose ``settings`` hold each method's
        parameters; the caller adds what it knows about the data.

    Raises:
        ValueError: mismatched shapes, fewer than 10 hashtags, no split or no
            method.
    """
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    labels = sp.csr_matrix(labels, dtype=np.float32)
    methods = METHODS if methods is None else methods
    if embeddings.ndim != 2 or len(embeddings) != labels.shape[0]:
        raise ValueError(
            f"embeddings of shape {embeddings.shape} do not match labels of shape "
            f"{labels.shape}; expected (n, d) and (n, n_tags)"
        )
    deepest = max(k for ks in BENCHMARK_KS.values() for k in ks)
    if labels.shape[1] < deepest:
        raise ValueError(
            f"the benchmark ranks {deepest} hashtags per photo but there are only "
            f"{labels.shape[1]}; use a vocabulary of at least {deepest} hashtags"
        )
    if not splits:
        raise ValueError("no split to run; give at least one (train, test) pair")
    if not methods:
        raise ValueError("no method to run; give at least one")

    rows = []
    parameters: dict[str, dict[str, Any]] = {}
    choices = []
    for number, (train_ids, test_ids) in enumerate(splits, start=1):
        train_embeddings = embeddings[train_ids]
        train_labels = labels[train_ids]
        test_embeddings = embeddings[test_ids]
        truth = labels[test_ids]
        for name, factory in methods.items():
            logger.info(
                "split %d/%d: %s on %d training and %d test photos",
                number,
                len(splits),
                name,
                len(train_ids),
                len(test_ids),
            )
            method = factory()
            parameters.setdefault(name, _parameters(method))
            figures = _measure(
                method,
                train_embeddings,
                train_labels,
                test_embeddings,
                truth,
                batch_queries=batch_queries,
                latency_queries=latency_queries,
            )
            chosen = getattr(method, "chosen_", None)
            if chosen is not None:
                choices.append({"method": name, "split": number, **chosen})
            logger.info(
                "split %d/%d: %s fitted in %.1f s, P@1 %.1f%%, R@5 %.1f%%, "
                "%.0f queries/s",
                number,
                len(splits),
                name,
                figures["fit_seconds"],
                100 * figures["P@1"],
                100 * figures["R@5"],
                figures["queries_per_second"],
            )
            rows.append(
                {
                    "method": name,
                    "split": number,
                    "n_train": len(train_ids),
                    "n_test": len(test_ids),
                    **figures,
                }
            )
    return BenchmarkResult(
        pd.DataFrame(rows), {"method_parameters": parameters, "choices": choices}
    )


def _parameters(method: Method) -> dict[str, Any]:
    """A method's settings for the record: its, or its head's, plain parameters;
    a blend's own beside its head's, under ``head``."""
    if isinstance(method, BlendedMethod):
        return {**_plain_parameters(method), "head": _plain_parameters(method.head)}
    return _plain_parameters(getattr(method, "head", method))


def _plain_parameters(settings: Any) -> dict[str, Any]:
    if hasattr(settings, "get_params"):
        values = settings.get_params()
    else:
        values = {k: v for k, v in vars(settings).items() if not k.endswith("_")}
    plain = (bool, int, float, str, tuple, type(None))
    return {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in values.items()
        if isinstance(value, plain)
    }


def _measure(
    method: Method,
    train_embeddings: np.ndarray,
    train_labels: sp.csr_matrix,
    test_embeddings: np.ndarray,
    truth: sp.csr_matrix,
    *,
    batch_queries: int,
    latency_queries: int,
) -> dict[str, float]:
    """Quality and cost of one method on one split."""
    with _peak_memory() as memory:
        started = time.perf_counter()
        method.fit(train_embeddings, train_labels)
        fit_seconds = time.perf_counter() - started

        scores = method.scores(test_embeddings)
        expected = (len(test_embeddings), train_labels.shape[1])
        if scores.shape != expected:
            raise ValueError(
                f"{type(method).__name__}.scores returned shape {scores.shape}; "
                f"expected {expected} (queries, hashtags)"
            )

        batch = np.resize(test_embeddings, (batch_queries, test_embeddings.shape[1]))
        batch_seconds = _time_suggestions(method, batch)
        # One query runs on one thread, as harrison_knn.threads has the
        # suggester do: on a busy machine a second thread waits for a core.
        with threadpool_limits(limits=1):
            single = [
                _time_suggestions(method, batch[i : i + 1])
                for i in range(min(latency_queries, batch_queries))
            ]
    # Evaluated outside the measured block: the metrics' own memory is the
    # same for every method and would hide the method's.
    quality = evaluate(scores, truth, ks=BENCHMARK_KS)
    return {
        **quality,
        "fit_seconds": fit_seconds,
        "queries_per_second": batch_queries / batch_seconds,
        "latency_ms": 1000 * float(np.median(single)),
        "peak_memory_mib": memory.added_mib,
        "peak_rss_mib": memory.peak_mib,
    }


def _time_suggestions(method: Method, queries: np.ndarray) -> float:
    """Seconds to score ``queries`` and rank their top hashtags."""
    started = time.perf_counter()
    scores = method.scores(queries)
    rank_tags(scores, min(SUGGESTED, scores.shape[1]))
    return time.perf_counter() - started


@dataclass
class _Memory:
    """Resident memory of this process, MiB: at the start of a block, at its peak."""

    start_mib: float = 0.0
    peak_mib: float = 0.0

    @property
    def added_mib(self) -> float:
        return max(0.0, self.peak_mib - self.start_mib)


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@contextmanager
def _peak_memory() -> Iterator[_Memory]:
    """Measure the peak resident memory of this process while a block runs.

    On Linux the kernel's high-water mark is reset on entry, so the peak is
    that of the block alone. Elsewhere the peak is ``ru_maxrss``, the peak of
    the whole process so far, and ``added_mib`` only shows a block that raised
    it. Native allocations (FAISS, torch) count, which ``tracemalloc`` would
    miss.
    """
    try:
        # "5" resets the peak resident set size to the current one.
        _CLEAR_REFS.write_text("5")
        resettable = True
    except OSError:
        resettable = False
    memory = _Memory(start_mib=_status_mib("VmRSS") or _ru_maxrss_mib())
    try:
        yield memory
    finally:
        peak = _status_mib("VmHWM") if resettable else None
        memory.peak_mib = peak if peak is not None else _ru_maxrss_mib()


def _status_mib(key: str) -> float | None:
    """A memory figure of /proc/self/status in MiB, or None where there is none."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _ru_maxrss_mib() -> float:
    """The peak resident memory of the whole process so far, MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Kilobytes on Linux, bytes on macOS.
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def scale_embeddings(
    labels: sp.spmatrix,
    *,
    width: int = SCALE_WIDTH,
    noise: float = SCALE_NOISE,
    seed: int = 0,
) -> np.ndarray:
    """Generated embeddings whose geometry follows the photos' hashtags.

    Each hashtag gets a random unit direction; a photo's embedding is the
    normalised sum of its hashtags' directions, plus Gaussian noise of
    expected length ``noise``, normalised again. With ``noise=4`` and the
    HARRISON hashtags the noise outweighs the hashtag signal about 4 to 1, and
    neighbour voting reaches a P@1 of about 45% against 10% for popularity:
    neither trivial nor hopeless. A photo without hashtags is noise alone.

    Args:
        labels: ``(n, n_tags)`` 0/1, sparse or dense.
        width: embedding width d.
        noise: expected length of the noise added to the unit signal, >= 0.
        seed: seeds the directions and the noise.

    Returns:
        ``(n, width) float32``, unit rows.

    Raises:
        ValueError: ``width`` below 1 or ``noise`` negative.
    """
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    if not noise >= 0:
        raise ValueError(f"noise must be 0 or more, got {noise!r}")
    labels = sp.csr_matrix(labels, dtype=np.float32)
    rng = np.random.default_rng(seed)

    directions = rng.standard_normal((labels.shape[1], width), dtype=np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    embeddings = np.asarray(labels @ directions, dtype=np.float32)
    _normalise_rows(embeddings)

    embeddings += rng.standard_normal(embeddings.shape, dtype=np.float32) * np.float32(
        noise / math.sqrt(width)
    )
    _normalise_rows(embeddings)
    return embeddings


def _normalise_rows(vectors: np.ndarray) -> None:
    """Scale rows to unit length in place; zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)


def plot_precision_recall(result: BenchmarkResult, path: str | os.PathLike) -> Path:
    """Draw P@k and R@k against k = 1..10 for each method, as a PNG.

    Error bars are one standard deviation over splits.

    Returns:
        The written file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result.summary()
    ks = list(range(1, 11))
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for axis, prefix, title in (
        (axes[0], "P", "Precision@k"),
        (axes[1], "R", "Recall@k"),
    ):
        for method in result.methods:
            means = [100 * summary.loc[method, (f"{prefix}@{k}", "mean")] for k in ks]
            stds = [100 * summary.loc[method, (f"{prefix}@{k}", "std")] for k in ks]
            axis.errorbar(
                ks, means, yerr=np.nan_to_num(stds), marker="o", ms=3, capsize=2
            )
        axis.set_title(title)
        axis.set_xlabel("suggested hashtags k")
        axis.set_ylabel("%")
        axis.set_xticks(ks)
        axis.grid(alpha=0.3)
    figure.legend(
        result.methods, loc="lower center", ncol=len(result.methods), frameon=False
    )
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _percent_table(summary: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            column: [
                _mean_std(
                    summary.loc[m, (column, "mean")],
                    summary.loc[m, (column, "std")],
                    100,
                    1,
                )
                for m in summary.index
            ]
            for column in columns
        },
        index=summary.index,
    )


def _cost_table(summary: pd.DataFrame) -> pd.DataFrame:
    digits = {
        "fit_seconds": 3,
        "queries_per_second": 0,
        "latency_ms": 2,
        "peak_memory_mib": 0,
    }
    return pd.DataFrame(
        {
            title: [
                _mean_std(
                    summary.loc[m, (column, "mean")],
                    summary.loc[m, (column, "std")],
                    1,
                    digits[column],
                )
                for m in summary.index
            ]
            for column, title in COST_COLUMNS.items()
        },
        index=summary.index,
    )


def _mean_std(mean: float, std: float, scale: float, digits: int) -> str:
    text = f"{scale * mean:,.{digits}f}"
    if not math.isnan(std):
        text += f" ± {scale * std:,.{digits}f}"
    return text


def _markdown(table: pd.DataFrame) -> str:
    """A markdown table with the index as its first column, method names."""
    header = ["method", *table.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|",
    ]
    for method, row in table.iterrows():
        lines.append("| " + " | ".join([str(method), *map(str, row)]) + " |")
    return "\n".join(lines)


def _json_number(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


@dataclass
class _Input:
    """Embeddings to compare methods on, their labels and where they came from."""

    embeddings: np.ndarray
    labels: sp.csr_matrix
    name: str
    facts: dict[str, Any]


@dataclass(frozen=True)
class _EncoderIdentity:
    """An encoder's name and width: all an embedding cache needs to know."""

    name: str
    width: int


def _collection_input(args: argparse.Namespace) -> _Input:
    """Embeddings of a photo folder, read from (and added to) an index's cache.

    With ``--index`` the encoder is loaded only when some photo is not cached.
    """
    encoder = None
    if args.index is not None:
        index = TagIndex.load(args.index, verify=False)
        data_dir = Path(args.data_dir or index.data_root)
        cache_dir = Path(args.index)
        if args.encoder is None:
            identity = _EncoderIdentity(index.encoder, index.width)
        else:
            encoder = create_encoder(args.encoder, device=args.device)
            identity = _EncoderIdentity(encoder.name, encoder.width)
    else:
        data_dir = Path(args.data_dir)
        cache_dir = Path(args.cache or Path("indexes") / data_dir.resolve().name)
        encoder = create_encoder(args.encoder or DEFAULT_ENCODER, device=args.device)
        identity = _EncoderIdentity(encoder.name, encoder.width)
    collection = read_collection(data_dir)
    store = embedding_store_for(cache_dir, identity)
    # The keys a build uses, so that a build's cache serves the benchmark and
    # the other way round.
    keys = embedding_keys(collection)
    vectors, ok = store.get(keys)
    cached = int(ok.sum())
    logger.info(
        "%d of %d photos of %s are in the embedding cache %s",
        cached,
        len(collection),
        data_dir,
        store.directory,
    )

    started = time.perf_counter()
    failures: dict[str, str] = {}
    if cached < len(collection):
        if encoder is None:
            encoder = create_encoder(identity.name, device=args.device)
        vectors, ok, failures = _embed(args, collection, keys, encoder, store)
    kept = np.flatnonzero(ok)
    if failures:
        logger.warning(
            "%d unreadable photos are left out of the benchmark", len(failures)
        )
    return _Input(
        embeddings=vectors[kept],
        labels=collection.label_matrix()[kept],
        name=cache_dir.name,
        facts={
            "mode": "photos",
            "data_dir": str(data_dir.resolve()),
            "encoder": identity.name,
            "width": identity.width,
            "embedding_cache": str(store.directory),
            "photos_listed": len(collection),
            "photos_cached_before": cached,
            "photos_skipped": len(failures),
            "seconds_embedding": round(time.perf_counter() - started, 3),
            "hashtags": len(collection.vocabulary),
        },
    )


def _embed(
    args: argparse.Namespace,
    collection: Collection,
    keys: list[str],
    encoder: Encoder,
    store: EmbeddingStore,
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Embed the photos the cache lacks, with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(
        total=len(collection), unit="photo", desc="embedding", disable=args.quiet
    )

    def on_progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    try:
        result = embed_photos(
            [collection.photo_path(i) for i in range(len(collection))],
            encoder,
            keys=keys,
            store=store,
            batch_size=args.batch_size,
            num_workers=args.workers,
            on_progress=on_progress,
        )
    finally:
        bar.close()
    return result.vectors, result.ok, result.failures


def _scale_input(args: argparse.Namespace) -> _Input:
    """The real annotations of a folder with generated embeddings."""
    if args.data_dir is None:
        raise ValueError(
            "--scale needs the HARRISON annotation folder, e.g. "
            "'harrison-knn benchmark --scale ../shared/data/harrison'"
        )
    collection = read_collection(args.data_dir)
    labels = collection.label_matrix()
    started = time.perf_counter()
    embeddings = scale_embeddings(
        labels, width=args.width, noise=args.noise, seed=args.seed
    )
    seconds = time.perf_counter() - started
    logger.info(
        "generated %d embeddings of width %d (noise %g) in %.1f s",
        len(embeddings),
        args.width,
        args.noise,
        seconds,
    )
    return _Input(
        embeddings=embeddings,
        labels=labels,
        name=f"scale-{Path(args.data_dir).resolve().name}",
        facts={
            "mode": "scale",
            "data_dir": str(Path(args.data_dir).resolve()),
            "embeddings": (
                "generated: one random unit direction per hashtag; a photo is the "
                "normalised sum of its hashtags' directions plus Gaussian noise of "
                "expected length `noise`, normalised"
            ),
            "width": args.width,
            "noise": args.noise,
            "photos_listed": len(collection),
            "hashtags": len(collection.vocabulary),
            "seconds_generating": round(seconds, 3),
        },
    )


def _splits(args: argparse.Namespace, n: int) -> tuple[list, dict[str, Any]]:
    """The splits the arguments ask for, and how they were made.

    ``--folds`` gives folds and ``--seeds`` seeded splits; with neither, 5
    folds, or in scale mode one split seeded by ``--seed``: at full HARRISON
    size one split is what 15 minutes on 2 cores allow.
    """
    seeds = args.seeds
    if seeds is None and args.folds is None and args.scale:
        seeds = [args.seed]
    if seeds is None:
        folds = DEFAULT_FOLDS if args.folds is None else args.folds
        splits = fold_indices(n, folds, args.seed)
        return splits, {"kind": "fold_indices", "folds": folds, "seed": args.seed}
    test_size = args.test_size
    if test_size is None:
        test_size = SCALE_TEST_PHOTOS if args.scale else 0.2
    splits = [split_indices(n, test_size, seed) for seed in seeds]
    return splits, {"kind": "split_indices", "test_size": test_size, "seeds": seeds}


def _methods(args: argparse.Namespace) -> dict[str, MethodFactory]:
    methods = {name: METHODS[name] for name in args.methods or DEFAULT_METHODS}
    epochs = args.torch_epochs
    if epochs is not None:
        if "torch-linear" in methods:
            methods["torch-linear"] = lambda: HeadMethod(TorchLinearHead(epochs=epochs))
        if "voting+torch" in methods:
            methods["voting+torch"] = lambda: BlendedMethod(
                TorchLinearHead(epochs=epochs)
            )
    return methods


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def _write_outputs(result: BenchmarkResult, output: Path) -> dict[str, Path]:
    output.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": output / "benchmark.json",
        "tables": output / "tables.md",
        "plot": output / "precision-recall.png",
    }
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    paths["tables"].write_text(result.markdown_tables())
    plot_precision_recall(result, paths["plot"])
    return paths


def _save_heads(args: argparse.Namespace, methods: Mapping[str, Any]) -> list[Path]:
    names = [name for name in methods if name in HEADS]
    epochs = args.torch_epochs
    params = {"torch-linear": {"epochs": epochs}} if epochs is not None else {}
    for name in names:
        fit_head(args.index, name, **params.get(name, {}))
    return [head_folder(args.index, name) for name in names]


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``harrison-knn benchmark``."""
    parser = argparse.ArgumentParser(
        prog="harrison-knn benchmark",
        description=(
            "Compare neighbour voting, linear heads and the popularity floor on "
            "the same embeddings and splits: quality (mean ± std over splits), "
            "fit time, queries per second, latency and peak memory. Prints "
            "markdown tables and writes benchmark.json, tables.md and "
            "precision-recall.png."
        ),
        epilog=(
            "examples:\n"
            "  harrison-knn benchmark ../shared/data/flickr8k-1k --folds 5\n"
            "  harrison-knn benchmark --index indexes/flickr8k-1k --save-heads\n"
            "  harrison-knn benchmark --scale ../shared/data/harrison --seeds 0"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "data_dir",
        nargs="?",
        metavar="DATA_DIR",
        help="HARRISON-layout folder (with --index: the index's own by default)",
    )
    source = parser.add_argument_group("embeddings")
    source.add_argument(
        "--index",
        help="use the embedding cache of this built index (indexes/NAME)",
    )
    source.add_argument(
        "--cache",
        help="index folder whose embedding cache to use and fill "
        "(default: indexes/<name of DATA_DIR>)",
    )
    source.add_argument(
        "--encoder", help="image encoder (default: the index's, else the default one)"
    )
    source.add_argument("--device", help="torch device (default: cuda if seen)")
    source.add_argument("--batch-size", type=int, default=32)
    source.add_argument("--workers", type=int, help="decoding processes")
    source.add_argument(
        "--scale",
        action="store_true",
        help="generate embeddings for the annotations of DATA_DIR (no photos read)",
    )
    source.add_argument(
        "--width",
        type=int,
        default=SCALE_WIDTH,
        help="--scale: embedding width (default: %(default)s)",
    )
    source.add_argument(
        "--noise",
        type=float,
        default=SCALE_NOISE,
        help="--scale: noise length against the unit hashtag signal "
        "(default: %(default)s)",
    )
    splitting = parser.add_argument_group("splits")
    splitting.add_argument(
        "--folds",
        type=int,
        help=f"k-fold splits (default: {DEFAULT_FOLDS}; with --scale: --seeds)",
    )
    splitting.add_argument(
        "--seed", type=int, default=0, help="seed of the folds and of --scale"
    )
    splitting.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="random train/test splits, one per seed, instead of folds "
        "(default with --scale: one split, seeded by --seed)",
    )
    splitting.add_argument(
        "--test-size",
        type=float,
        help="with --seeds: test fraction, or count when >= 1 "
        f"(default: 0.2; {SCALE_TEST_PHOTOS} with --scale)",
    )
    run = parser.add_argument_group("methods and output")
    run.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        metavar="METHOD",
        help=f"methods to compare (default: {' '.join(DEFAULT_METHODS)}; also "
        f"{' '.join(name for name in METHODS if name not in DEFAULT_METHODS)}: "
        "voting blended with a head, which takes as long again)",
    )
    run.add_argument(
        "--torch-epochs",
        type=int,
        help="epochs of the torch-linear head (default: the head's own)",
    )
    run.add_argument(
        "--queries",
        type=int,
        default=1000,
        help="batch size timed for queries per second (default: %(default)s)",
    )
    run.add_argument(
        "--output",
        help="folder for benchmark.json, tables.md and the plot "
        "(default: runs/benchmark-<name>)",
    )
    run.add_argument(
        "--save-heads",
        action="store_true",
        help="with --index: afterwards fit each linear head on all the index's "
        "photos and save it in INDEX/heads/<method>/",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    return parser


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.scale and args.index:
        parser.error("--scale generates its embeddings; it takes no --index")
    if not args.scale and args.data_dir is None and args.index is None:
        parser.error("give DATA_DIR, --index indexes/NAME, or --scale DATA_DIR")
    if args.cache and args.index:
        parser.error("--index uses that index's cache; give --cache or --index")
    if args.save_heads and args.index is None:
        parser.error("--save-heads needs --index: heads are saved beside a built index")
    if args.folds is not None and args.seeds is not None:
        parser.error("give --folds or --seeds, not both")
    if args.test_size is not None:
        if args.test_size >= 1 and args.test_size.is_integer():
            args.test_size = int(args.test_size)
        elif not 0 < args.test_size < 1:
            parser.error(
                f"--test-size must be a fraction or a count, got {args.test_size}"
            )
    if args.queries < 1:
        parser.error(f"--queries must be at least 1, got {args.queries}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``harrison-knn benchmark``; returns the exit status."""
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    _check_arguments(parser, args)
    from .cli import configure_logging

    configure_logging(verbose=args.verbose, quiet=args.quiet)
    started = time.perf_counter()
    machine_before = _machine()

    from .dataset import AnnotationError
    from .index import IndexFormatError

    try:
        source = _scale_input(args) if args.scale else _collection_input(args)
        splits, split_facts = _splits(args, len(source.embeddings))
        methods = _methods(args)
        result = run_benchmark(
            source.embeddings,
            source.labels,
            splits,
            methods,
            batch_queries=args.queries,
        )
        saved_heads = _save_heads(args, methods) if args.save_heads else []
    except (AnnotationError, IndexFormatError, FileNotFoundError, ValueError) as error:
        print(f"harrison-knn benchmark: {error}", file=sys.stderr)
        return 2

    total_seconds = time.perf_counter() - started
    result.settings = {
        **result.settings,
        "command": ["harrison-knn", "benchmark", *arguments],
        "data": source.facts,
        "photos": len(source.embeddings),
        "splits": split_facts,
        "methods": list(methods),
        "torch_epochs": args.torch_epochs,
        "latency": (
            "embedding given: the encoder's time is not included; each query "
            f"is scored and its top {SUGGESTED} hashtags ranked"
        ),
        "machine_at_start": machine_before,
        "machine_at_end": _machine(),
        "process_peak_rss_mib": round(_ru_maxrss_mib(), 1),
        "total_seconds": round(total_seconds, 2),
    }
    output = Path(args.output or Path("runs") / f"benchmark-{source.name}")
    paths = _write_outputs(result, output)

    print(result.markdown_tables())
    for path in saved_heads:
        print(f"saved head: {path}")
    print(
        f"wrote {paths['json']}, {paths['tables']} and {paths['plot']}; "
        f"{len(source.embeddings)} photos, {len(splits)} split(s), "
        f"{total_seconds:.0f} s in all "
        f"(load average {machine_before['load_average'][0]:.2f} at start, "
        f"{result.settings['machine_at_end']['load_average'][0]:.2f} at end)"
    )
    return 0
