"""Linear-head baselines: one linear score per hashtag over the embeddings.

Two heads give the same kind of scores as voting, ``(n_queries, n_tags)
float32``, higher is better, so the benchmark can rank and evaluate them alike:

- ``LogisticHead``: one-vs-rest logistic regression with scikit-learn, one
  binary model per hashtag, with its regularisation ``C`` chosen on held-out
  training photos.
- ``TorchLinearHead``: one ``torch.nn.Linear`` layer for all hashtags at once,
  trained with binary cross-entropy and AdamW, on a GPU when torch sees one.

Both learn ``coef_`` ``(n_tags, d) float32`` and ``intercept_`` ``(n_tags,)
float32``, and score with ``embeddings @ coef_.T + intercept_``: the logit of
the probability that the photo carries the hashtag.

Hashtags that cannot be fitted are explicit. A hashtag with fewer than
``min_positives`` positive training photos (every hashtag without any) is not
fitted: its weights are zero and its intercept is ``-inf``, so it scores
``-inf``, below every fitted hashtag, for every photo. A hashtag carried by
every training photo has no negative example; it is not fitted either and
scores ``+inf``. Any hashtag with at least ``min_positives`` positives and one
negative is fitted, even with a single positive photo.

A fitted head is saved as a folder of ``.npy`` arrays and a small JSON file,
and loaded back without unpickling anything.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, cpu_count, delayed
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from .metrics import mean_average_precision

__all__ = [
    "FORMAT_VERSION",
    "HeadFormatError",
    "LogisticHead",
    "TorchLinearHead",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the saved-head folder layout; ``load`` refuses any other."""

_METADATA = "head.json"


class HeadFormatError(ValueError):
    """A saved head folder is missing, corrupted or does not fit together."""


class _LinearHead(BaseEstimator):
    """Scoring, checks and saving shared by the linear heads.

    Subclasses implement ``fit``; it must set ``coef_``, ``intercept_``,
    ``n_positives_``, ``n_features_in_`` and ``n_tags_``.
    """

    # Learned values beyond the arrays that `save` writes to the JSON file.
    _saved_attributes: tuple[str, ...] = ()

    def predict_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Hashtag scores of photos: the logits of the fitted models.

        Args:
            embeddings: ``(n_queries, d) float32``, unit rows, ``d`` as fitted.

        Returns:
            ``(n_queries, n_tags) float32``, higher is better; ``-inf`` for
            hashtags too rare to fit, ``+inf`` for hashtags on every
            training photo.

        Raises:
            NotFittedError: before ``fit`` or ``load``.
            ValueError: if ``embeddings`` is not ``(n, d)`` or not finite.
        """
        self._check_fitted()
        embeddings = _check_embeddings(embeddings, width=self.n_features_in_)
        return embeddings @ self.coef_.T + self.intercept_

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Per-hashtag probabilities, the sigmoid of ``predict_scores``.

        Args:
            embeddings: ``(n_queries, d) float32``, unit rows.

        Returns:
            ``(n_queries, n_tags) float32`` in ``[0, 1]``. In float32 the
            probabilities of confident hashtags round to exactly 1 and tie,
            so rank with ``predict_scores``.
        """
        return expit(self.predict_scores(embeddings)).astype(np.float32)

    def save(self, directory: str | Path) -> Path:
        """Write the fitted head to ``directory`` (created if needed).

        The folder holds ``coef.npy`` ``(n_tags, d) float32``, ``intercept.npy``
        ``(n_tags,) float32``, ``n_positives.npy`` ``(n_tags,) int64`` and
        ``head.json`` with the format version, the class name, the
        hyper-parameters and the learned scalars.

        Returns:
            The folder, as a ``Path``.
        """
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {
            "coef": self.coef_,
            "intercept": self.intercept_,
            "n_positives": self.n_positives_,
        }
        for name, array in arrays.items():
            np.save(directory / f"{name}.npy", array, allow_pickle=False)
        metadata = {
            "format_version": FORMAT_VERSION,
            "kind": type(self).__name__,
            "params": _json_params(self.get_params()),
            "n_tags": self.n_tags_,
            "n_features": self.n_features_in_,
            "learned": {name: getattr(self, name) for name in self._saved_attributes},
        }
        (directory / _METADATA).write_text(json.dumps(metadata, indent=1) + "\n")
        logger.info("saved %s to %s", type(self).__name__, directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> _LinearHead:
        """Read a head written by ``save``.

        Args:
            directory: the folder given to ``save``.

        Returns:
            A fitted head of this class whose scores equal the saved one's.

        Raises:
            FileNotFoundError: if the folder or one of its files is missing.
            HeadFormatError: if the format version, the class or an array's
                shape or dtype does not match, or a file cannot be read.
        """
        directory = Path(directory)
        metadata = _read_metadata(directory / _METADATA)
        if metadata["kind"] != cls.__name__:
            raise HeadFormatError(
                f"{directory / _METADATA} holds a {metadata['kind']}, not a "
                f"{cls.__name__}; load it with {metadata['kind']}.load"
            )
        n_tags, width = metadata["n_tags"], metadata["n_features"]
        expected = {
            "coef": ((n_tags, width), np.float32),
            "intercept": ((n_tags,), np.float32),
            "n_positives": ((n_tags,), np.int64),
        }
        arrays = {
            name: _read_array(directory / f"{name}.npy", shape, dtype)
            for name, (shape, dtype) in expected.items()
        }

        try:
            head = cls(**metadata["params"])
        except TypeError as error:
            raise HeadFormatError(
                f"{directory / _METADATA} has parameters {cls.__name__} does not "
                f"take: {error}"
            ) from error
        head.coef_ = arrays["coef"]
        head.intercept_ = arrays["intercept"]
        head.n_positives_ = arrays["n_positives"]
        head.n_tags_ = n_tags
        head.n_features_in_ = width
        for name in cls._saved_attributes:
            if name not in metadata["learned"]:
                raise HeadFormatError(f"{directory / _METADATA} lacks learned {name!r}")
            setattr(head, name, metadata["learned"][name])
        return head

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit or load"
            )


class LogisticHead(_LinearHead):
    """One-vs-rest L2 logistic regression, one scikit-learn model per hashtag.

    With ``C=None``, ``fit`` first chooses ``C`` from ``Cs``: on a random
    sample of at most ``search_rows`` training photos it fits every hashtag
    with each ``C`` (warm-started from the previous, smaller one) on a
    ``1 - validation_size`` part and keeps the ``C`` with the best mean
    average precision (``metrics.mean_average_precision``) of the full
    hashtag ranking on the rest. mAP is used because it reads the whole
    ranking of every photo, so it is less noisy on a small validation part
    than P@1 or R@5. Ties keep the smaller ``C``. Then every hashtag is refit
    on all the training photos with that ``C``.

    ``C`` weighs the summed (not averaged) log-loss against ``||w||^2 / 2``,
    so the same ``C`` is the same Gaussian prior on the weights on the search
    sample and on the full training set.

    Speed: a hashtag's model is fitted on at most ``rows_per_tag`` photos.
    When the training set is larger, its positives and negatives are sampled
    (each class keeps at least half the rows or all it has) and weighted by
    the inverse of their sampling rate, so the loss is an unbiased estimate of
    the loss on all photos. Hashtags are fitted in ``n_jobs`` threads, which
    share the embeddings: L-BFGS spends its time in BLAS calls that release
    the GIL.

    Measured on 2 CPU cores, synthetic 52,000 x 512 embeddings, 997 hashtags
    of Zipf-like frequency, default parameters: 135 s (210 CPU-seconds), of
    which 35 s for the ``C`` search; up to 300 s when other processes share
    the cores. ``rows_per_tag`` is the main lever on time. 800 x 1280
    embeddings with about 200 hashtags: about 7 s.

    Args:
        C: inverse regularisation strength; ``None`` chooses it from ``Cs``.
        Cs: the candidate ``C`` values for the search.
        validation_size: share of the search sample used for validation.
        search_rows: most photos used by the ``C`` search.
        rows_per_tag: most photos one hashtag's model is fitted on; ``None``
            fits every hashtag on all photos.
        min_positives: fewest positive photos a hashtag needs to be fitted.
        tol: the L-BFGS stopping tolerance, relative to the hashtag's share:
            a hashtag on ``p`` of ``n`` photos stops when the gradient is below
            ``tol * min(p, n - p) / n``. scikit-learn's absolute tolerance
            would stop a rare hashtag's model almost at its prior, since the
            gradient of its mean log-loss is of that order.
        max_iter: the most L-BFGS iterations per model.
        seed: seeds the search sample, its split and the row sampling.
        n_jobs: threads fitting hashtags in parallel, as in joblib: ``-1``
            for all cores, ``None`` for one.

    Attributes:
        coef_: ``(n_tags, d) float32`` weights.
        intercept_: ``(n_tags,) float32`` biases, ``-inf``/``+inf`` for
            hashtags not fitted.
        n_positives_: ``(n_tags,) int64`` positive training photos per hashtag.
        C_: the ``C`` used for the final fit.
        search_scores_: ``{str(C): validation mAP}``; empty when ``C`` was given.
    """

    _saved_attributes = ("C_", "search_scores_")

    def __init__(
        self,
        C: float | None = None,
        Cs: tuple[float, ...] = (1.0, 10.0, 100.0),
        validation_size: float = 0.2,
        search_rows: int = 6000,
        rows_per_tag: int | None = 10000,
        min_positives: int = 1,
        tol: float = 3e-3,
        max_iter: int = 100,
        seed: int = 0,
        n_jobs: int = -1,
    ) -> None:
        self.C = C
        self.Cs = Cs
        self.validation_size = validation_size
        self.search_rows = search_rows
        self.rows_per_tag = rows_per_tag
        self.min_positives = min_positives
        self.tol = tol
        self.max_iter = max_iter
        self.seed = seed
        self.n_jobs = n_jobs

    def fit(
        self, embeddings: np.ndarray, labels: sp.spmatrix | np.ndarray
    ) -> LogisticHead:
        """Fit one logistic regression per hashtag.

        Args:
            embeddings: ``(n, d) float32``, unit rows.
            labels: ``(n, n_tags)`` 0/1, ``csr_matrix`` or dense.

        Returns:
            ``self``.

        Raises:
            ValueError: on mismatched shapes, labels other than 0/1, or a bad
                hyper-parameter.
        """
        self._check_params()
        embeddings = _check_embeddings(embeddings)
        labels = _check_labels(labels, len(embeddings))
        n, width = embeddings.shape
        n_tags = labels.shape[1]
        started = time.perf_counter()

        self.C_ = float(self.C) if self.C is not None else None
        self.search_scores_ = {}
        if self.C_ is None:
            self.C_, self.search_scores_ = self._search_C(embeddings, labels)

        positive_rows = _positive_rows(labels)
        n_positives = np.array([len(rows) for rows in positive_rows], np.int64)
        coef = np.zeros((n_tags, width), np.float32)
        intercept, fitted = _constant_intercepts(n_positives, n, self.min_positives)
        _log_constant_tags(intercept, self.min_positives)
        tags = np.flatnonzero(fitted)
        logger.info(
            "fitting %d hashtags on %d photos x %d with C=%g",
            len(tags),
            n,
            width,
            self.C_,
        )
        stopped = 0
        for chunk, (chunk_coef, chunk_intercept, chunk_stopped) in _run_per_chunk(
            _fit_tags,
            tags,
            self.n_jobs,
            embeddings,
            positive_rows,
            C=self.C_,
            rows_per_tag=self.rows_per_tag,
            tol=self.tol,
            max_iter=self.max_iter,
            seed=self.seed,
        ):
            coef[chunk] = chunk_coef
            intercept[chunk] = chunk_intercept
            stopped += chunk_stopped
        if stopped:
            logger.info(
                "%d of %d hashtag models stopped at max_iter=%d before tol",
                stopped,
                len(tags),
                self.max_iter,
            )

        self.coef_ = coef
        self.intercept_ = intercept
        self.n_positives_ = n_positives
        self.n_tags_ = n_tags
        self.n_features_in_ = width
        logger.info("fitted LogisticHead in %.1f s", time.perf_counter() - started)
        return self

    def _search_C(
        self, embeddings: np.ndarray, labels: sp.csr_matrix
    ) -> tuple[float, dict[str, float]]:
        """Choose ``C`` on a validation part of a training sample."""
        rng = np.random.default_rng(self.seed)
        sample = rng.permutation(len(embeddings))[: self.search_rows]
        n_validation = max(1, round(self.validation_size * len(sample)))
        if len(sample) - n_validation < 2:
            raise ValueError(
                f"the C search needs at least 2 training photos besides the "
                f"validation part; got {len(sample)} photos in all. Pass C"
            )
        train_ids = np.sort(sample[n_validation:])
        validation_ids = np.sort(sample[:n_validation])
        train_labels = labels[train_ids]
        validation_truth = labels[validation_ids]
        if validation_truth.nnz == 0:
            raise ValueError(
                f"none of the {n_validation} validation photos of the C search has a "
                "hashtag; raise validation_size or pass C"
            )

        positive_rows = _positive_rows(train_labels)
        n_positives = np.array([len(rows) for rows in positive_rows], np.int64)
        n_tags = labels.shape[1]
        constant, fitted = _constant_intercepts(
            n_positives, len(train_ids), self.min_positives
        )
        tags = np.flatnonzero(fitted)
        Cs = sorted({float(C) for C in self.Cs})
        logger.info(
            "choosing C from %s on %d training and %d validation photos",
            Cs,
            len(train_ids),
            n_validation,
        )
        started = time.perf_counter()
        scores = np.broadcast_to(constant, (len(Cs), n_validation, n_tags)).copy()
        for chunk, chunk_scores in _run_per_chunk(
            _score_tags_per_C,
            tags,
            self.n_jobs,
            embeddings[train_ids],
            embeddings[validation_ids],
            positive_rows,
            Cs=Cs,
            tol=self.tol,
            max_iter=self.max_iter,
        ):
            scores[:, :, chunk] = chunk_scores

        search_scores = {
            str(C): mean_average_precision(scores[i], validation_truth)
            for i, C in enumerate(Cs)
        }
        best = max(Cs, key=lambda C: (search_scores[str(C)], -C))
        logger.info(
            "validation mAP by C: %s; chose C=%g (%.1f s)",
            ", ".join(f"{C}: {value:.4f}" for C, value in search_scores.items()),
            best,
            time.perf_counter() - started,
        )
        return best, search_scores

    def _check_params(self) -> None:
        if self.C is not None and not self.C > 0:
            raise ValueError(f"C must be positive or None, got {self.C!r}")
        if self.C is None and (len(self.Cs) == 0 or min(self.Cs) <= 0):
            raise ValueError(f"Cs must be non-empty and positive, got {self.Cs!r}")
        if not 0 < self.validation_size < 1:
            raise ValueError(
                f"validation_size must be between 0 and 1, got {self.validation_size!r}"
            )
        if self.search_rows < 3:
            raise ValueError(f"search_rows must be at least 3, got {self.search_rows}")
        if self.rows_per_tag is not None and self.rows_per_tag < 2:
            raise ValueError(
                f"rows_per_tag must be at least 2 or None, got {self.rows_per_tag}"
            )
        if self.n_jobs is not None and (
            not isinstance(self.n_jobs, int) or self.n_jobs == 0
        ):
            raise ValueError(
                f"n_jobs must be a non-zero integer or None, got {self.n_jobs!r}"
            )
        _check_min_positives(self.min_positives)


class TorchLinearHead(_LinearHead):
    """All hashtags' logistic models at once, as one torch linear layer.

    The loss is the mean binary cross-entropy over photos and hashtags
    (``BCEWithLogitsLoss``) without positive re-weighting, so that each output
    stays an estimate of the probability that the photo carries the hashtag:
    ranking a photo's hashtags by that probability is what precision rewards.
    A ``pos_weight`` would favour rare hashtags, trading precision for recall.
    The optimiser is AdamW (decoupled ``weight_decay``) with a cosine decay of
    the learning rate to zero; weights start at zero and biases at the log-odds
    of each hashtag's training frequency, the best constant model.

    Training runs ``epochs`` passes over the photos, extended so that at least
    ``min_steps`` steps are taken: with the default large batches a small
    collection would otherwise get only a few dozen steps.

    Runs on ``device``, by default CUDA when torch sees a GPU, else the CPU. On
    the CPU a fit is deterministic for a given ``seed``: the seed drives only
    the photo order of each epoch, through a private generator, and the global
    torch random state is left alone.

    Measured on 2 CPU cores, synthetic 52,000 x 512 embeddings, 997 hashtags,
    default parameters: 35 s (45 CPU-seconds), and a held-out mAP of 0.751
    where ``LogisticHead`` reached 0.735. 800 x 1280 embeddings with about 200
    hashtags (200 full-batch steps): about 3 s.

    Args:
        epochs: passes over the training photos.
        lr: the peak AdamW learning rate.
        weight_decay: the AdamW decoupled weight decay.
        batch_size: photos per step.
        min_steps: fewest optimiser steps; ``epochs`` is raised to reach it.
        min_positives: fewest positive photos a hashtag needs to be fitted.
        device: a torch device name, or ``None`` for CUDA if available.
        n_threads: CPU threads torch may use during ``fit`` (restored after);
            ``None`` keeps torch's setting. Fewer threads can be faster on a
            CPU that other processes keep busy.
        seed: seeds the photo order.

    Attributes:
        coef_: ``(n_tags, d) float32`` weights.
        intercept_: ``(n_tags,) float32`` biases, ``-inf``/``+inf`` for
            hashtags not fitted.
        n_positives_: ``(n_tags,) int64`` positive training photos per hashtag.
        loss_history_: the mean training loss of each epoch run.
    """

    _saved_attributes = ("loss_history_",)

    def __init__(
        self,
        epochs: int = 10,
        lr: float = 0.1,
        weight_decay: float = 1e-4,
        batch_size: int = 2048,
        min_steps: int = 200,
        min_positives: int = 1,
        device: str | None = None,
        n_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.min_steps = min_steps
        self.min_positives = min_positives
        self.device = device
        self.n_threads = n_threads
        self.seed = seed

    def fit(
        self, embeddings: np.ndarray, labels: sp.spmatrix | np.ndarray
    ) -> TorchLinearHead:
        """Train the linear layer.

        Args:
            embeddings: ``(n, d) float32``, unit rows.
            labels: ``(n, n_tags)`` 0/1, ``csr_matrix`` or dense.

        Returns:
            ``self``.

        Raises:
            ValueError: on mismatched shapes, labels other than 0/1, or a bad
                hyper-parameter.
        """
        import torch

        self._check_params()
        embeddings = _check_embeddings(embeddings)
        labels = _check_labels(labels, len(embeddings))
        n, width = embeddings.shape
        n_tags = labels.shape[1]
        device = torch.device(
            self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        started = time.perf_counter()

        n_positives = np.asarray(labels.getnnz(axis=0), np.int64)
        coef = np.zeros((n_tags, width), np.float32)
        intercept, fitted = _constant_intercepts(n_positives, n, self.min_positives)
        _log_constant_tags(intercept, self.min_positives)
        tags = np.flatnonzero(fitted)

        self.loss_history_ = []
        threads = torch.get_num_threads()
        try:
            if self.n_threads is not None:
                torch.set_num_threads(self.n_threads)
            if len(tags):
                coef[tags], intercept[tags] = self._train_layer(
                    embeddings, labels[:, tags].tocsr(), n_positives[tags], device
                )
        finally:
            torch.set_num_threads(threads)

        self.coef_ = coef
        self.intercept_ = intercept
        self.n_positives_ = n_positives
        self.n_tags_ = n_tags
        self.n_features_in_ = width
        logger.info("trained TorchLinearHead in %.1f s", time.perf_counter() - started)
        return self

    def _train_layer(
        self,
        embeddings: np.ndarray,
        labels: sp.csr_matrix,
        n_positives: np.ndarray,
        device,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Train one linear layer on the hashtags to fit; record the losses.

        Args:
            embeddings: ``(n, d) float32``.
            labels: ``(n, m)`` 0/1 of the ``m`` hashtags to fit, each with
                positives and negatives.
            n_positives: ``(m,) int64`` their positive counts.
            device: the ``torch.device`` to train on.

        Returns:
            ``(m, d) float32`` weights and ``(m,) float32`` biases.
        """
        import torch

        n, width = embeddings.shape
        steps_per_epoch = -(-n // self.batch_size)
        epochs = max(self.epochs, -(-self.min_steps // steps_per_epoch))
        logger.info(
            "training a linear layer for %d hashtags on %d photos x %d: %d epochs "
            "of %d steps on %s",
            labels.shape[1],
            n,
            width,
            epochs,
            steps_per_epoch,
            device,
        )

        layer = torch.nn.Linear(width, labels.shape[1]).to(device)
        frequency = n_positives / n
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.copy_(torch.from_numpy(np.log(frequency / (1 - frequency))))
        optimizer = torch.optim.AdamW(
            layer.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=epochs * steps_per_epoch
        )
        loss_function = torch.nn.BCEWithLogitsLoss()
        generator = torch.Generator().manual_seed(self.seed)
        inputs = torch.from_numpy(embeddings).to(device)

        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator).numpy()
            total = torch.zeros((), device=device)
            for start in range(0, n, self.batch_size):
                batch = np.sort(order[start : start + self.batch_size])
                targets = torch.from_numpy(labels[batch].toarray()).to(device)
                logits = layer(inputs[torch.from_numpy(batch).to(device)])
                loss = loss_function(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.detach() * len(batch)
            self.loss_history_.append(float(total) / n)
            # Per epoch is debugging detail; the fit's start and end are logged.
            logger.debug(
                "epoch %d/%d: loss %.5f", epoch + 1, epochs, self.loss_history_[-1]
            )

        weight = layer.weight.detach().cpu().numpy()
        bias = layer.bias.detach().cpu().numpy()
        return weight, bias

    def _check_params(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_threads is not None and (
            not isinstance(self.n_threads, int) or self.n_threads < 1
        ):
            raise ValueError(
                f"n_threads must be a positive integer or None, got {self.n_threads!r}"
            )
        if not isinstance(self.min_steps, int) or self.min_steps < 0:
            raise ValueError(
                f"min_steps must be an integer >= 0, got {self.min_steps!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _check_min_positives(self.min_positives)


def _constant_intercepts(
    n_positives: np.ndarray, n: int, min_positives: int
) -> tuple[np.ndarray, np.ndarray]:
    """Intercepts of the hashtags that are not fitted, and which are fitted.

    Args:
        n_positives: ``(n_tags,) int64`` positive photos per hashtag.
        n: the number of training photos.
        min_positives: fewest positives a fitted hashtag needs.

    Returns:
        ``intercept`` ``(n_tags,) float32``: ``-inf`` for hashtags with fewer
        than ``min_positives`` positives, ``+inf`` for hashtags on all ``n``
        photos, 0 elsewhere; and ``fitted`` ``(n_tags,) bool``.
    """
    too_rare = n_positives < min_positives
    everywhere = (n_positives >= n) & ~too_rare
    intercept = np.zeros(len(n_positives), np.float32)
    intercept[too_rare] = -np.inf
    intercept[everywhere] = np.inf
    return intercept, ~(too_rare | everywhere)


def _log_constant_tags(intercept: np.ndarray, min_positives: int) -> None:
    for value, reason in (
        (
            -np.inf,
            "have no positive photo"
            if min_positives == 1
            else f"have fewer than {min_positives} positive photos",
        ),
        (np.inf, "are on every training photo"),
    ):
        ids = np.flatnonzero(intercept == value)
        if len(ids):
            logger.info(
                "%d hashtags %s: not fitted, they score %s (ids %s%s)",
                len(ids),
                reason,
                value,
                ids[:10].tolist(),
                " ..." if len(ids) > 10 else "",
            )


def _fit_tags(
    embeddings: np.ndarray,
    positive_rows: list[np.ndarray],
    tags: np.ndarray,
    *,
    C: float,
    rows_per_tag: int | None,
    tol: float,
    max_iter: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fit a logistic model for each of ``tags`` (run in a worker thread).

    Args:
        embeddings: ``(n, d) float32`` training photos.
        positive_rows: the positive row ids of every hashtag.
        tags: ``(m,) int64`` the hashtags to fit.

    Returns:
        ``(len(tags), d) float32`` weights, ``(len(tags),) float32`` biases and
        how many of the models stopped at ``max_iter``.
    """
    n, width = embeddings.shape
    coef = np.empty((len(tags), width), np.float32)
    intercept = np.empty(len(tags), np.float32)
    stopped = 0
    for i, tag in enumerate(tags):
        positives = positive_rows[tag]
        # A generator per hashtag keeps its sample independent of the chunking.
        rng = np.random.default_rng([seed, int(tag)])
        rows, targets, weights = _sample_rows(positives, n, rows_per_tag, rng)
        model = LogisticRegression(
            C=C, tol=_relative_tol(tol, len(positives), n), max_iter=max_iter
        )
        inputs = embeddings if rows is None else embeddings[rows]
        _quiet_fit(model, inputs, targets, weights)
        coef[i] = model.coef_[0]
        intercept[i] = model.intercept_[0]
        stopped += int(model.n_iter_[0] >= max_iter)
    return coef, intercept, stopped


def _score_tags_per_C(
    train_embeddings: np.ndarray,
    validation_embeddings: np.ndarray,
    positive_rows: list[np.ndarray],
    tags: np.ndarray,
    *,
    Cs: list[float],
    tol: float,
    max_iter: int,
) -> np.ndarray:
    """Validation logits of each of ``tags`` for each ``C`` (worker thread).

    Args:
        train_embeddings: ``(n, d) float32`` photos to fit on.
        validation_embeddings: ``(n_validation, d) float32`` photos to score.
        positive_rows: the positive row ids of every hashtag in the ``n``.
        tags: ``(m,) int64`` the hashtags to fit.
        Cs: ascending ``C`` values.

    Returns:
        ``(len(Cs), n_validation, m) float32``.
    """
    n = len(train_embeddings)
    scores = np.empty((len(Cs), len(validation_embeddings), len(tags)), np.float32)
    for j, tag in enumerate(tags):
        positives = positive_rows[tag]
        targets = np.zeros(n, bool)
        targets[positives] = True
        # Ascending C with warm starts: each fit starts from the previous, more
        # regularised solution, which is close.
        model = LogisticRegression(
            tol=_relative_tol(tol, len(positives), n),
            max_iter=max_iter,
            warm_start=True,
        )
        for i, C in enumerate(Cs):
            model.set_params(C=C)
            _quiet_fit(model, train_embeddings, targets, None)
            scores[i, :, j] = model.decision_function(validation_embeddings)
    return scores


def _run_per_chunk(function, tags: np.ndarray, n_jobs: int | None, *args, **kwargs):
    """``function(*args, chunk, **kwargs)`` for chunks of ``tags``, in threads.

    Returns:
        ``[(chunk, result), ...]``.
    """
    n_threads = _effective_jobs(n_jobs)
    chunks = [tags[i :: 4 * n_threads] for i in range(4 * n_threads)]
    chunks = [chunk for chunk in chunks if len(chunk)]
    # Threads, not processes: scikit-learn spends these fits in BLAS, which
    # releases the GIL, and threads share the embeddings without copies. One
    # BLAS thread each, since these matrix-vector products are too small to
    # split and the parallelism is across hashtags.
    # Limitation: the BLAS limit holds for the whole process, so other threads
    # of the process also get single-threaded BLAS while hashtags are fitted.
    with threadpool_limits(limits=1):
        results = Parallel(n_jobs=n_threads, prefer="threads")(
            delayed(function)(*args, chunk, **kwargs) for chunk in chunks
        )
    return list(zip(chunks, results))


def _relative_tol(tol: float, n_positives: int, n: int) -> float:
    """The L-BFGS gradient tolerance for a hashtag on ``n_positives`` of ``n``.

    The gradient of the mean log-loss is of the order of the minority class's
    share, so an absolute tolerance stops rare hashtags almost at their prior.
    """
    return tol * min(n_positives, n - n_positives) / n


def _sample_rows(
    positives: np.ndarray, n: int, rows_per_tag: int | None, rng: np.random.Generator
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """The photos one hashtag is fitted on, their 0/1 targets and weights.

    With more than ``rows_per_tag`` photos, each class keeps at least half of
    the budget (or all its photos) and is weighted by its inverse sampling
    rate, so that the weighted loss estimates the loss on all ``n`` photos.

    Returns:
        ``rows`` ``(m,) int64`` sorted, ``targets`` ``(m,) bool`` and
        ``weights`` ``(m,) float64``; ``rows`` and ``weights`` are ``None``
        when all ``n`` photos are kept.
    """
    # Limitation: sampling trades accuracy for time. On synthetic 52,000 x 512
    # embeddings with 997 hashtags (C=30, tol=1e-3), held-out mAP was 0.690,
    # 0.717, 0.733 and 0.743 with 5,000, 10,000, 20,000 and all photos per
    # hashtag; the fits took about 80, 380 and 890 CPU-seconds for 5,000,
    # 20,000 and all photos.
    if rows_per_tag is None or n <= rows_per_tag:
        targets = np.zeros(n, bool)
        targets[positives] = True
        return None, targets, None

    is_positive = np.zeros(n, bool)
    is_positive[positives] = True
    negatives = np.flatnonzero(~is_positive)
    n_positive, n_negative = len(positives), len(negatives)
    keep_positive = min(n_positive, max(rows_per_tag // 2, rows_per_tag - n_negative))
    keep_negative = min(n_negative, rows_per_tag - keep_positive)
    kept_positives = rng.choice(positives, keep_positive, replace=False)
    kept_negatives = rng.choice(negatives, keep_negative, replace=False)

    rows = np.concatenate([kept_positives, kept_negatives])
    weights = np.concatenate(
        [
            np.full(keep_positive, n_positive / keep_positive),
            np.full(keep_negative, n_negative / keep_negative),
        ]
    )
    order = np.argsort(rows)
    return rows[order], is_positive[rows[order]], weights[order]


def _quiet_fit(
    model: LogisticRegression,
    embeddings: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray | None,
) -> None:
    """Fit, counting L-BFGS non-convergence as acceptable at ``max_iter``."""
    # Limitation: a model stopped at max_iter is used as it is; the final fit
    # logs how many were, the C search does not.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(embeddings, targets, sample_weight=weights)


def _positive_rows(labels: sp.csr_matrix) -> list[np.ndarray]:
    """The sorted row ids of each column's positives."""
    columns = labels.tocsc()
    columns.sort_indices()
    return [
        columns.indices[columns.indptr[tag] : columns.indptr[tag + 1]].astype(np.int64)
        for tag in range(columns.shape[1])
    ]


def _effective_jobs(n_jobs: int | None) -> int:
    """Threads for joblib's ``n_jobs``: ``None`` is 1, ``-1`` all cores."""
    if n_jobs is None:
        return 1
    if n_jobs < 0:
        return max(1, cpu_count() + 1 + n_jobs)
    return n_jobs


def _check_embeddings(embeddings: np.ndarray, width: int | None = None) -> np.ndarray:
    """``embeddings`` as C-contiguous ``(n, d) float32``, checked."""
    embeddings = np.ascontiguousarray(embeddings, np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(
            f"embeddings must be a non-empty (n, d) array, got shape {embeddings.shape}"
        )
    if width is not None and embeddings.shape[1] != width:
        raise ValueError(
            f"embeddings have shape {embeddings.shape} but the head was fitted on "
            f"width d={width}; expected (n, {width})"
        )
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings hold NaN or infinite values")
    return embeddings


def _check_labels(labels: sp.spmatrix | np.ndarray, n: int) -> sp.csr_matrix:
    """``labels`` as a ``(n, n_tags) float32`` 0/1 ``csr_matrix``, checked."""
    labels = sp.csr_matrix(labels, dtype=np.float32, copy=True)
    labels.eliminate_zeros()
    if labels.shape[0] != n or labels.shape[1] == 0:
        raise ValueError(
            f"labels have shape {labels.shape} but embeddings have {n} rows; "
            f"expected ({n}, n_tags)"
        )
    if not (labels.data == 1).all():
        bad = np.unique(labels.data[labels.data != 1])
        raise ValueError(f"labels must hold only 0 and 1, found {bad[:5].tolist()}")
    return labels


def _check_min_positives(min_positives: int) -> None:
    if not isinstance(min_positives, int) or min_positives < 1:
        raise ValueError(
            f"min_positives must be an integer >= 1, got {min_positives!r}"
        )


def _json_params(params: dict) -> dict:
    """Hyper-parameters as JSON values (tuples become lists, devices names)."""
    converted = {}
    for name, value in params.items():
        if isinstance(value, tuple):
            value = list(value)
        elif value is not None and not isinstance(value, (bool, int, float, str, list)):
            value = str(value)
        converted[name] = value
    return converted


def _read_metadata(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"no saved head at {path.parent}: {path.name} is missing"
        )
    try:
        metadata = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HeadFormatError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(metadata, dict):
        raise HeadFormatError(f"{path} must hold a JSON object")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise HeadFormatError(
            f"{path} has format_version {version!r}; this version of harrison-knn "
            f"reads only {FORMAT_VERSION}. Refit and save the head again"
        )
    for key in ("kind", "params", "n_tags", "n_features", "learned"):
        if key not in metadata:
            raise HeadFormatError(f"{path} lacks the key {key!r}")
    for key in ("n_tags", "n_features"):
        if not isinstance(metadata[key], int) or metadata[key] < 1:
            raise HeadFormatError(
                f"{path} has {key}={metadata[key]!r}; expected a positive integer"
            )
    if "Cs" in metadata["params"] and isinstance(metadata["params"]["Cs"], list):
        metadata["params"]["Cs"] = tuple(metadata["params"]["Cs"])
    return metadata


def _read_array(path: Path, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(
            f"no saved head at {path.parent}: {path.name} is missing"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise HeadFormatError(
            f"{path} is not a readable .npy array: {error}"
        ) from error
    if array.shape != shape or array.dtype != dtype:
        raise HeadFormatError(
            f"{path} holds a {array.dtype} array of shape {array.shape}; expected "
            f"{np.dtype(dtype)} of shape {shape} from {_METADATA}"
        )
    return array
