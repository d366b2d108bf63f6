"""A search space learnt from the indexed photos' hashtags.

An image encoder trained on object classes places photos by what they show;
two photos people tag alike (``#sunset``, ``#beach``, ``#travel``) can still
lie far apart. :class:`LabelProjection` adds to each embedding a second part:
the hashtags a ridge regression from the indexed photos predicts for it, as a
unit vector. Neighbours are then searched on both parts, so a neighbour counts
as close when it looks like the query and when the hashtags it would be given
agree with the query's. The projection is fitted once per index, on the
indexed photos only, and saved with it; queries go through the same map.

For a row ``x`` (unit length) the searched vector is::

    [ sqrt(1 - mix) * unit(x @ W),  sqrt(mix) * x ]

which has unit length again, so inner products stay cosine similarities:
``(1 - mix) * cos(xW, yW) + mix * cos(x, y)``. ``mix = 1`` is the plain
embedding.

:class:`TagPrototypes` works on the index side alone: each indexed photo is
stored partway toward the typical vector of photos with its hashtags, so what
a photo shows beyond its hashtags counts for less. :func:`fit_search_space`
fits both parts of a search space, as a build or a tuning fold needs them.
"""

from __future__ import annotations

import io
import logging
import zipfile

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from .voting import check_number, check_ridge

__all__ = [
    "DEFAULT_PROJECTION_RIDGE",
    "DEFAULT_PROTOTYPE_RIDGE",
    "LabelProjection",
    "TagPrototypes",
    "check_mix",
    "check_pull",
    "fit_search_space",
]

logger = logging.getLogger(__name__)

DEFAULT_PROJECTION_RIDGE = 1.0
DEFAULT_PROTOTYPE_RIDGE = 1.0
MAX_PULL = 0.99
"""Largest prototype pull: taking a photo's own vector back out of a stored row
divides by ``1 - pull``, which above this magnifies float32 rounding past
1e-5 (and at ``1 - 1e-8`` the pull rounds to 1 and nothing is left)."""


def check_mix(mix: float) -> None:
    """Refuse a projection mix outside ``(0, 1]`` (NaN included) or not a
    number, naming it."""
    check_number("projection_mix", mix)
    if not 0.0 < mix <= 1.0:
        raise ValueError(f"projection_mix must lie in (0, 1], got {mix!r}")


def check_pull(pull: float) -> None:
    """Refuse a prototype pull outside ``[0, MAX_PULL]`` (NaN included) or not
    a number, naming it."""
    check_number("prototype_pull", pull)
    if not 0.0 <= pull <= MAX_PULL:
        raise ValueError(f"prototype_pull must lie in [0, {MAX_PULL}], got {pull!r}")


class LabelProjection:
    """Embedding plus predicted hashtags, the space neighbours are searched in.

    Args:
        weights: ``(d, n_tags) float32`` ridge map from an embedding to hashtag
            scores.
        mix: share of the similarity that comes from the plain embedding, in
            ``(0, 1]``.

    Raises:
        ValueError: weights not a 2-D finite array of real numbers, or mix
            outside ``(0, 1]``.
    """

    def __init__(self, weights: np.ndarray, mix: float) -> None:
        weights = _checked_weights(weights, "projection weights", "(width, tags)")
        check_mix(mix)
        self.weights = weights
        self.mix = float(mix)

    @property
    def input_width(self) -> int:
        """Width d of the embeddings it maps."""
        return self.weights.shape[0]

    @property
    def output_width(self) -> int:
        """Width of the searched vectors, ``n_tags + d``."""
        return self.weights.shape[1] + self.weights.shape[0]

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        labels: sp.spmatrix | np.ndarray,
        *,
        mix: float,
        ridge: float = DEFAULT_PROJECTION_RIDGE,
    ) -> LabelProjection:
        """Fit ``W = (X^T X + ridge * I)^-1 X^T Y`` on the indexed photos.

        Args:
            embeddings: ``(n, d) float32`` unit rows.
            labels: ``(n, n_tags)`` 0/1 matrix of their hashtags.
            mix: see the class.
            ridge: regularisation, > 0.

        Raises:
            ValueError: rows that do not match, no photo, NaN or infinite
                embeddings, or ridge not a finite number > 0.
        """
        embeddings = _checked_rows(embeddings, labels)
        check_ridge(ridge)
        width = embeddings.shape[1]
        # Accumulated in float64: X^T X of 57,000 unit rows loses digits in float32.
        covariance = embeddings.T.astype(np.float64) @ embeddings.astype(np.float64)
        covariance[np.diag_indices(width)] += ridge
        targets = sp.csr_matrix(labels, dtype=np.float64)
        right = np.asarray((targets.T @ embeddings.astype(np.float64)).T)
        weights = scipy.linalg.solve(covariance, right, assume_a="pos")
        logger.debug(
            "label projection fitted on %d photos: width %d to %d hashtags",
            embeddings.shape[0],
            width,
            targets.shape[1],
        )
        return cls(weights, mix)

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        """Searched vectors of embeddings, ``(n, n_tags + d) float32`` unit rows.

        Raises:
            ValueError: embeddings of another width.
        """
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.input_width:
            raise ValueError(
                f"embeddings must have shape (n, {self.input_width}), got "
                f"{embeddings.shape}"
            )
        predicted = embeddings @ self.weights
        norms = np.linalg.norm(predicted, axis=1, keepdims=True)
        predicted = np.divide(
            predicted, norms, out=np.zeros_like(predicted), where=norms > 0
        )
        joined = np.hstack(
            [
                predicted * np.float32(np.sqrt(1.0 - self.mix)),
                embeddings * np.float32(np.sqrt(self.mix)),
            ]
        )
        # A row whose prediction is all zero loses that part; rescaling keeps it
        # a unit vector, as the inner-product index needs.
        lengths = np.linalg.norm(joined, axis=1, keepdims=True)
        joined = np.divide(joined, lengths, out=joined, where=lengths > 0)
        return np.ascontiguousarray(joined, dtype=np.float32)

    def embeddings_of(self, searched: np.ndarray) -> np.ndarray:
        """The embeddings back from searched vectors, ``(n, d) float32`` unit rows.

        The embedding part of a searched vector is the embedding times a
        positive number, so scaling it back to unit length recovers it (to
        float32 rounding).
        """
        searched = np.asarray(searched, dtype=np.float32)
        if searched.ndim != 2 or searched.shape[1] != self.output_width:
            raise ValueError(
                f"searched vectors must have shape (n, {self.output_width}), got "
                f"{searched.shape}"
            )
        part = searched[:, self.weights.shape[1] :]
        lengths = np.linalg.norm(part, axis=1, keepdims=True)
        return np.divide(part, lengths, out=np.zeros_like(part), where=lengths > 0)

    def to_bytes(self) -> bytes:
        """The projection as an ``.npz`` file's bytes (no pickled objects)."""
        buffer = io.BytesIO()
        np.savez(buffer, weights=self.weights, mix=np.float64(self.mix))
        return buffer.getvalue()

    @classmethod
    def from_file(cls, path) -> LabelProjection:
        """Read a file written from :meth:`to_bytes`.

        Raises:
            ValueError: the file is empty, not an ``.npz`` archive, holds
                pickled objects, lacks an array or holds bad values.
        """
        weights, mix = _read_arrays(path, "weights", "mix")
        try:
            return cls(weights, mix)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


class TagPrototypes:
    """Indexed photos pulled toward the typical vector of their hashtags.

    A ridge regression from the indexed photos gives, for any set of hashtags,
    the vector photos with those hashtags have on average: their prototype. An
    indexed photo is stored at ``(1 - pull) * v + pull * prototype``, where
    ``v`` is its own searched vector, so a query's similarity to it is::

        (1 - pull) * cos(query, v) + pull * cos(query, prototype)

    What a photo shows beyond its hashtags (a passer-by, a badly lit corner)
    weighs less, and photos tagged alike draw together. Queries are not
    changed: only the index side knows hashtags. A photo without hashtags has
    no prototype and is stored as it is.

    Args:
        weights: ``(n_tags, width) float32`` map from a photo's hashtags (as a
            unit 0/1 row) to its prototype, before scaling to unit length.
        pull: weight of the prototype, in ``(0, MAX_PULL]``; below 1, so that a
            photo's own vector can be taken back out of the stored one.

    Raises:
        ValueError: weights not a 2-D finite array of real numbers, or pull
            outside ``(0, MAX_PULL]``.
    """

    def __init__(self, weights: np.ndarray, pull: float) -> None:
        self.weights = _checked_weights(weights, "prototype weights", "(tags, width)")
        check_pull(pull)
        if pull == 0.0:
            raise ValueError("prototype_pull 0 stores photos as they are: pass None")
        self.pull = float(pull)

    @property
    def tag_count(self) -> int:
        """Number of hashtags the map reads."""
        return self.weights.shape[0]

    @property
    def width(self) -> int:
        """Width of the searched vectors it pulls."""
        return self.weights.shape[1]

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        labels: sp.spmatrix | np.ndarray,
        *,
        pull: float,
        ridge: float = DEFAULT_PROTOTYPE_RIDGE,
    ) -> TagPrototypes:
        """Fit ``B = (T^T T + ridge * I)^-1 T^T V`` on the indexed photos.

        Args:
            vectors: ``(n, width) float32`` searched vectors of the photos.
            labels: ``(n, n_tags)`` 0/1 matrix of their hashtags; ``T`` is it
                with rows scaled to unit length.
            pull: see the class.
            ridge: regularisation, > 0.

        Raises:
            ValueError: rows that do not match, NaN or infinite vectors, or
                ridge not a finite number > 0.
        """
        vectors = _checked_rows(vectors, labels)
        check_ridge(ridge)
        tags = _unit_tag_rows(labels)
        gram = (tags.T @ tags).toarray()
        gram[np.diag_indices(tags.shape[1])] += ridge
        right = np.asarray(tags.T @ vectors.astype(np.float64))
        weights = scipy.linalg.solve(gram, right, assume_a="pos")
        logger.debug(
            "hashtag prototypes fitted on %d photos: %d hashtags to width %d",
            vectors.shape[0],
            tags.shape[1],
            vectors.shape[1],
        )
        return cls(weights, pull)

    def prototypes(self, labels: sp.spmatrix | np.ndarray) -> np.ndarray:
        """``(n, width) float32`` unit prototypes of photos with these hashtags;
        zero rows for photos without any."""
        labels = sp.csr_matrix(labels, dtype=np.float32)
        if labels.ndim != 2 or labels.shape[1] != self.tag_count:
            raise ValueError(
                f"labels must have {self.tag_count} hashtag columns, got "
                f"{labels.shape[1]}"
            )
        prototypes = np.asarray(_unit_tag_rows(labels) @ self.weights, np.float32)
        return _unit_rows(prototypes)

    def apply(
        self, vectors: np.ndarray, labels: sp.spmatrix | np.ndarray
    ) -> np.ndarray:
        """Stored rows of photos with these vectors and hashtags, ``(n, width)``."""
        vectors = self._checked_vectors(vectors, labels)
        prototypes = self.prototypes(labels)
        untagged = ~prototypes.any(axis=1)
        prototypes[untagged] = vectors[untagged]
        stored = (1.0 - self.pull) * vectors + self.pull * prototypes
        return np.ascontiguousarray(stored, dtype=np.float32)

    def remove(
        self, stored: np.ndarray, labels: sp.spmatrix | np.ndarray
    ) -> np.ndarray:
        """The photos' own vectors back from stored rows: undoes :meth:`apply`."""
        stored = self._checked_vectors(stored, labels)
        prototypes = self.prototypes(labels)
        untagged = ~prototypes.any(axis=1)
        own = (stored - self.pull * prototypes) / (1.0 - self.pull)
        own[untagged] = stored[untagged]
        return np.ascontiguousarray(own, dtype=np.float32)

    def _checked_vectors(self, vectors: np.ndarray, labels) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.width:
            raise ValueError(
                f"these prototypes pull vectors of width {self.width}; got vectors "
                f"of shape {vectors.shape}"
            )
        if labels.shape[0] != vectors.shape[0]:
            raise ValueError(
                f"{labels.shape[0]} label rows for {vectors.shape[0]} vectors"
            )
        return vectors

    def to_bytes(self) -> bytes:
        """The prototypes as an ``.npz`` file's bytes (no pickled objects)."""
        buffer = io.BytesIO()
        np.savez(buffer, weights=self.weights, pull=np.float64(self.pull))
        return buffer.getvalue()

    @classmethod
    def from_file(cls, path) -> TagPrototypes:
        """Read a file written from :meth:`to_bytes`.

        Raises:
            ValueError: as :meth:`LabelProjection.from_file`.
        """
        weights, pull = _read_arrays(path, "weights", "pull")
        try:
            return cls(weights, pull)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def fit_search_space(
    embeddings: np.ndarray,
    labels: sp.spmatrix | np.ndarray,
    *,
    mix: float = 1.0,
    pull: float = 0.0,
) -> tuple[LabelProjection | None, TagPrototypes | None]:
    """The projection and prototypes of one search space, fitted on the
    indexed photos; ``None`` for a part the space does not use.

    Args:
        embeddings: ``(n, d) float32`` unit rows of the indexed photos.
        labels: ``(n, n_tags)`` 0/1 matrix of their hashtags.
        mix: share of the plain embedding; 1 fits no projection.
        pull: weight of the hashtag prototypes; 0 fits none.

    Raises:
        ValueError: mix outside ``(0, 1]`` or pull outside ``[0, MAX_PULL]``.
    """
    check_mix(mix)
    check_pull(pull)
    projection = None
    vectors = embeddings
    if mix < 1.0:
        projection = LabelProjection.fit(embeddings, labels, mix=mix)
        vectors = projection.transform(embeddings)
    prototypes = TagPrototypes.fit(vectors, labels, pull=pull) if pull > 0 else None
    return projection, prototypes


def _checked_weights(weights: np.ndarray, name: str, shape: str) -> np.ndarray:
    """Weights as contiguous float32, refused when not a finite 2-D real array."""
    weights = np.asarray(weights)
    if weights.dtype.kind not in "fiu":
        # A cast would drop the imaginary part of complex weights, or read
        # strings as numbers, without a word.
        raise ValueError(f"{name} must be real numbers, got dtype {weights.dtype}")
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    if weights.ndim != 2 or weights.shape[0] == 0 or weights.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty {shape} array, got shape {weights.shape}"
        )
    if not np.isfinite(weights).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    return weights


def _checked_rows(vectors: np.ndarray, labels) -> np.ndarray:
    """Vectors to fit on, refused when empty, not finite or not matching labels."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(
            f"embeddings must be a non-empty (photos, width) array, got "
            f"shape {vectors.shape}"
        )
    rows = labels.shape[0] if hasattr(labels, "shape") else len(labels)
    if rows != vectors.shape[0]:
        raise ValueError(f"{rows} label rows for {vectors.shape[0]} embeddings")
    if not np.isfinite(vectors).all():
        raise ValueError("embeddings hold NaN or infinite values")
    return vectors


def _unit_tag_rows(labels) -> sp.csr_matrix:
    """Hashtag rows scaled to unit length, float64 CSR; empty rows stay empty."""
    tags = sp.csr_matrix(labels, dtype=np.float64)
    counts = np.asarray(tags.sum(axis=1)).ravel()
    scale = np.divide(1.0, np.sqrt(counts), out=np.zeros_like(counts), where=counts > 0)
    return sp.csr_matrix(sp.diags(scale) @ tags)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _read_arrays(path, weights_name: str, scalar_name: str) -> tuple[np.ndarray, float]:
    """A weights array and one real number from an ``.npz`` file, never unpickled.

    Raises:
        ValueError: the file is empty, a single array, lacks an entry, or the
            number is not a single real number.
    """
    try:
        arrays = np.load(path, allow_pickle=False)
    except EOFError:
        raise ValueError(f"{path} is empty") from None
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path} is not a readable .npz archive: {error}") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        # A bad file, not a bad argument: ValueError, as for other damage.
        raise ValueError(  # noqa: TRY004
            f"{path} is a single array, not an .npz archive"
        )
    with arrays:
        missing = {weights_name, scalar_name} - set(arrays.files)
        if missing:
            raise ValueError(f"{path} lacks {', '.join(sorted(missing))}")
        weights, scalar = arrays[weights_name], arrays[scalar_name]
    if scalar.shape != () or scalar.dtype.kind not in "fiu":
        raise ValueError(
            f"{path}: {scalar_name} must be a single real number, got an array of "
            f"shape {scalar.shape} and dtype {scalar.dtype}"
        )
    return weights, float(scalar)
