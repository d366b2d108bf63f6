"""The user-facing API: hashtags for photos from a saved index.

Example:
    >>> from harrison_knn import TagSuggester
    >>> suggester = TagSuggester.load("indexes/flickr")        # doctest: +SKIP
    >>> suggestion = suggester.suggest("beach.jpg", top=5)     # doctest: +SKIP
    >>> [(t.tag, round(t.score, 2)) for t in suggestion.tags]  # doctest: +SKIP
    [('beach', 0.71), ('sea', 0.55), ('sand', 0.31), ...]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import voting
from .embedding import default_batch_size, default_workers, iterate_batches
from .encoders import Encoder, create_encoder
from .images import PhotoError
from .index import IndexFormatError, TagIndex
from .metrics import rank_tags
from .threads import faiss_threads, threads_for_batch

__all__ = ["Neighbour", "Suggestion", "TagScore", "TagSuggester"]

logger = logging.getLogger(__name__)

PHOTOS_WORTH_WORKERS = 32
"""suggest_many decodes more photos than this in worker processes by default.
Starting a worker took 0.1 s on a 2-core machine, the time decoding 16 photos
in the calling process takes."""


@dataclass(frozen=True)
class TagScore:
    """One suggested hashtag and its score (the weighted share of its voters)."""

    tag: str
    score: float


@dataclass(frozen=True)
class Neighbour:
    """An indexed photo that voted: its path, similarity, vote weight and tags."""

    path: str
    similarity: float
    weight: float
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Suggestion:
    """The answer for one photo.

    ``tags`` holds the best hashtags, best first, only those that got votes;
    ``neighbours`` the photos that voted, nearest first. When the photo could
    not be read, ``error`` says why and both lists are empty.
    """

    photo: str
    tags: list[TagScore] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "photo": self.photo,
            "tags": [{"tag": t.tag, "score": t.score} for t in self.tags],
            "neighbours": [
                {
                    "path": n.path,
                    "similarity": n.similarity,
                    "weight": n.weight,
                    "tags": list(n.tags),
                }
                for n in self.neighbours
            ],
            "error": self.error,
        }


class TagSuggester:
    """Suggests hashtags by similarity-weighted voting of nearest neighbours.

    Args:
        index: the indexed, tagged photos.
        encoder: the encoder the index was built with; created from the index's
            metadata when None.
        k: neighbours that vote; defaults to the value saved with the index.
        weighting, temperature, popularity_correction, ridge, diversity: see
            :func:`harrison_knn.voting.vote`; default to the saved values.

    Raises:
        IndexFormatError: the encoder is not the one the index was built with.
    """

    def __init__(
        self,
        index: TagIndex,
        encoder: Encoder | None = None,
        *,
        k: int | None = None,
        weighting: str | None = None,
        temperature: float | None = None,
        popularity_correction: float | None = None,
        ridge: float | None = None,
        diversity: float | None = None,
    ) -> None:
        saved = index.settings.get("voting", {})
        self.index = index
        self.encoder = encoder
        self.k = k if k is not None else saved.get("k", voting.DEFAULT_K)
        self.weighting = weighting or saved.get("weighting", voting.DEFAULT_WEIGHTING)
        self.temperature = (
            temperature
            if temperature is not None
            else saved.get("temperature", voting.DEFAULT_TEMPERATURE)
        )
        self.popularity_correction = (
            popularity_correction
            if popularity_correction is not None
            else saved.get("popularity_correction", 0.0)
        )
        self.ridge = (
            ridge if ridge is not None else saved.get("ridge", voting.DEFAULT_RIDGE)
        )
        # Indexes built before diversity existed have none in their settings.
        self.diversity = (
            diversity
            if diversity is not None
            else saved.get("diversity", voting.DEFAULT_DIVERSITY)
        )
        # Checked here, not at the first query: a command given bad settings
        # fails before it reads any photo.
        voting.check_settings(
            {
                "k": self.k,
                "weighting": self.weighting,
                "temperature": self.temperature,
                "popularity_correction": self.popularity_correction,
                "ridge": self.ridge,
                "diversity": self.diversity,
            }
        )
        if encoder is not None:
            _check_encoder(index, encoder)
        self.threshold = saved.get("threshold")
        self._prior = voting.tag_prior(index.labels)
        self._tag_lists: list[tuple[str, ...]] | None = None
        self._ids_by_file: dict[Path, int] | None = None

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        encoder: Encoder | str | None = None,
        device: str | None = None,
        use_gpu: bool = True,
        **voting_options: Any,
    ) -> TagSuggester:
        """Open a saved index with its encoder.

        Args:
            directory: the index folder written by ``harrison-knn build``.
            encoder: an encoder or encoder name; by default the one recorded in
                the index. Another one is refused with :class:`IndexFormatError`.
            device: torch device for the encoder; the GPU when one is visible.
            use_gpu: move the FAISS index to the GPU when faiss supports it.
            voting_options: ``k``, ``weighting``, ``temperature``,
                ``popularity_correction``, ``ridge``, ``diversity`` overriding
                the saved defaults. The search space (``projection_mix``,
                ``prototype_pull``) is fixed by the build.

        Raises:
            ValueError: a search-space setting is given.
        """
        fixed = sorted({"projection_mix", "prototype_pull"} & set(voting_options))
        if fixed:
            raise ValueError(
                f"{' and '.join(fixed)} cannot be changed when an index is loaded: "
                "the indexed vectors are stored in the space the build chose; "
                "build again with --projection-mix or --prototype-pull"
            )
        # Before the index and the encoder are loaded, which can take seconds;
        # None keeps the saved value.
        voting.check_settings(
            {name: value for name, value in voting_options.items() if value is not None}
        )
        expected = encoder.name if isinstance(encoder, Encoder) else encoder
        index = TagIndex.load(directory, encoder=expected)
        if not isinstance(encoder, Encoder):
            encoder = create_encoder(index.encoder, device=device)
        if use_gpu:
            index.to_gpu()
        return cls(index, encoder, **voting_options)

    def score(
        self,
        embeddings: np.ndarray,
        *,
        k: int | None = None,
        exclude_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vote for every hashtag.

        Args:
            embeddings: ``(q, d) float32`` unit rows.
            k: neighbours that vote; the suggester's default when None.
            exclude_ids: ``(q,) int64``; the index row each query must not see
                among its neighbours (itself, for leave-one-out), or -1.

        Returns:
            ``(scores, similarities, neighbour_ids)``: ``(q, n_tags) float32`` and
            ``(q, k)`` neighbours, nearest first, ``-1`` for empty slots.
        """
        scores, similarities, ids, _ = self._score_with_weights(
            embeddings, k=k, exclude_ids=exclude_ids
        )
        return scores, similarities, ids

    def _score_with_weights(self, embeddings, *, k, exclude_ids):
        """:meth:`score`, and the ``(q, k) float32`` weight of each neighbour."""
        k = self.k if k is None else k
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        # A few queries search on one thread, like the encoder's small batches.
        with faiss_threads(threads_for_batch(len(embeddings))):
            similarities, ids = self.index.search(
                embeddings, k if exclude_ids is None else k + 1
            )
        if exclude_ids is not None:
            exclude_ids = np.asarray(exclude_ids, dtype=np.int64).reshape(-1)
            if len(exclude_ids) != len(ids):
                raise ValueError(
                    f"{len(exclude_ids)} excluded ids for {len(ids)} queries"
                )
            drop = ids == exclude_ids[:, None]
            # Moving the excluded neighbour to the end keeps the others in order.
            order = np.argsort(drop, axis=1, kind="stable")[:, :k]
            similarities = np.take_along_axis(similarities, order, axis=1)
            ids = np.take_along_axis(ids, order, axis=1)
        gram = None
        if self.weighting == "reconstruction":
            gram = self.index.neighbour_gram(ids)
        weights = voting.neighbour_weights(
            similarities,
            ids >= 0,
            weighting=self.weighting,
            temperature=self.temperature,
            ridge=self.ridge,
            gram=gram,
        )
        scores = voting.diversified_votes(
            weights,
            ids,
            self.index.labels,
            diversity=self.diversity,
            popularity_correction=self.popularity_correction,
            prior=self._prior,
        )
        return scores, similarities, ids, weights

    def suggest_embeddings(
        self,
        embeddings: np.ndarray,
        top: int = 5,
        *,
        names: Sequence[str] | None = None,
        k: int | None = None,
        exclude_ids: np.ndarray | None = None,
        threshold: float | str | None = None,
    ) -> list[Suggestion]:
        """Suggestions for photos already embedded, ``(q, d) float32`` unit rows.

        ``top``, ``k`` and ``threshold`` are as for :meth:`suggest`;
        ``exclude_ids`` as for :meth:`score`; ``names`` label the answers.
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2:
            raise ValueError(
                f"embeddings must be a (photos, width) array, got {embeddings.shape}"
            )
        names = names or [f"photo {i}" for i in range(len(embeddings))]
        scores, similarities, ids, weights = self._score_with_weights(
            embeddings, k=k, exclude_ids=exclude_ids
        )
        if len(embeddings) == 0:
            return []
        top = _check_top(top, len(self.index.vocabulary))
        threshold = self._resolve_threshold(threshold)
        tag_ids, tag_scores = rank_tags(scores, top)
        # A hashtag no neighbour carries is never suggested, whatever the
        # popularity correction did to its score.
        shares = scores + np.float32(self.popularity_correction) * self._prior
        voted = shares > 1e-7
        tag_lists = self._tags_of_photos()
        suggestions = []
        for row, name in enumerate(names):
            tags = [
                TagScore(self.index.vocabulary[t], float(s))
                for t, s in zip(tag_ids[row], tag_scores[row])
                if voted[row, t]
            ]
            if threshold is not None:
                tags = tags[:1] + [t for t in tags[1:] if t.score >= threshold]
            neighbours = [
                Neighbour(
                    path=self.index.paths[i],
                    similarity=float(similarities[row, j]),
                    weight=float(weights[row, j]),
                    tags=tag_lists[i],
                )
                for j, i in enumerate(ids[row])
                if i >= 0
            ]
            suggestions.append(Suggestion(str(name), tags, neighbours))
        return suggestions

    def suggest(
        self,
        photo: Any,
        top: int = 5,
        *,
        k: int | None = None,
        exclude_self: bool = False,
        threshold: float | str | None = None,
    ) -> Suggestion:
        """Hashtags for one photo.

        Args:
            photo: a path, a PIL image, or an ``(h, w, 3) uint8`` RGB array.
            top: at most this many hashtags, best first.
            k: neighbours that vote; the suggester's default when None.
            exclude_self: when the photo is itself in the index, leave it out of
                its own neighbours.
            threshold: for a variable-length answer, also drop hashtags scoring
                below this (the best one is always kept); ``"auto"`` uses the
                threshold the build calibrated. None gives the top ``top``.

        Raises:
            PhotoError: the photo cannot be read.
        """
        result = self.suggest_many(
            [photo], top, k=k, exclude_self=exclude_self, threshold=threshold
        )[0]
        if result.error is not None:
            raise PhotoError(photo, result.error)
        return result

    def suggest_many(
        self,
        photos: Sequence[Any],
        top: int = 5,
        *,
        k: int | None = None,
        exclude_self: bool = False,
        threshold: float | str | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> list[Suggestion]:
        """Hashtags for many photos; one that cannot be read gets ``error`` set.

        Args:
            photos: paths, PIL images or ``(h, w, 3) uint8`` arrays.
            top, k, exclude_self, threshold: see :meth:`suggest`.
            batch_size: photos per forward pass of the encoder; None picks
                :func:`~harrison_knn.embedding.default_batch_size`.
            num_workers: decoding processes (0 decodes in this process); None
                starts them only for more than :data:`PHOTOS_WORTH_WORKERS`
                photos.
        """
        if self.encoder is None:
            raise ValueError(
                "this suggester has no encoder; use TagSuggester.load() or pass one"
            )
        if batch_size is None:
            batch_size = default_batch_size(self.encoder.device)
        if num_workers is None:
            many = len(photos) > PHOTOS_WORTH_WORKERS
            num_workers = default_workers(self.encoder.device) if many else 0
        names = [_name_of(photo, position) for position, photo in enumerate(photos)]
        results: list[Suggestion | None] = [None] * len(photos)
        for batch in iterate_batches(
            photos,
            self.encoder.preprocess,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=self.encoder.device.type == "cuda",
        ):
            for position, reason in batch["failures"]:
                results[position] = Suggestion(names[position], error=reason)
            if not batch["positions"]:
                continue
            embeddings = self.encoder.encode_batch(batch["pixels"])
            exclude = None
            if exclude_self:
                exclude = np.array(
                    [self._indexed_id(photos[p]) for p in batch["positions"]],
                    dtype=np.int64,
                )
            answers = self.suggest_embeddings(
                embeddings,
                top,
                names=[names[p] for p in batch["positions"]],
                k=k,
                exclude_ids=exclude,
                threshold=threshold,
            )
            for position, answer in zip(batch["positions"], answers):
                results[position] = answer
        return results

    def _resolve_threshold(self, threshold: float | str | None) -> float | None:
        if threshold == "auto":
            if self.threshold is None:
                raise ValueError(
                    "this index has no calibrated threshold (it was built without "
                    "tuning); pass a number instead of 'auto'"
                )
            return float(self.threshold)
        if threshold is not None and not isinstance(threshold, (int, float)):
            raise ValueError(f"threshold must be a number or 'auto', got {threshold!r}")
        return threshold

    def _tags_of_photos(self) -> list[tuple[str, ...]]:
        if self._tag_lists is None:
            labels = self.index.labels
            vocabulary = self.index.vocabulary
            self._tag_lists = [
                tuple(vocabulary[t] for t in labels.indices[start:end])
                for start, end in zip(labels.indptr[:-1], labels.indptr[1:])
            ]
        return self._tag_lists

    def _indexed_id(self, photo: Any) -> int:
        if not isinstance(photo, (str, os.PathLike)):
            return -1
        if self._ids_by_file is None:
            root = Path(self.index.data_root)
            self._ids_by_file = {
                (root / path).resolve(): i for i, path in enumerate(self.index.paths)
            }
        return self._ids_by_file.get(Path(photo).resolve(), -1)


def _check_top(top: int, n_tags: int) -> int:
    if not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a whole number of at least 1, got {top!r}")
    return min(int(top), n_tags)


def _check_encoder(index: TagIndex, encoder: Encoder) -> None:
    if encoder.name != index.encoder or encoder.width != index.width:
        raise IndexFormatError(
            f"the index was built with encoder {index.encoder!r} "
            f"(width {index.width}), not {encoder.name!r} (width {encoder.width}); "
            "use the same encoder or rebuild the index"
        )


def _name_of(photo: Any, position: int) -> str:
    if isinstance(photo, (str, os.PathLike)):
        return str(photo)
    return f"photo {position}"
