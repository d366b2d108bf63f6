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
"""

from __future__ import annotations

import io
import logging

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from .voting import check_ridge

__all__ = ["DEFAULT_PROJECTION_RIDGE", "LabelProjection", "check_mix"]

logger = logging.getLogger(__name__)

DEFAULT_PROJECTION_RIDGE = 1.0


def check_mix(mix: float) -> None:
    """Refuse a projection mix outside ``(0, 1]`` (NaN included), naming it."""
    if not 0.0 < mix <= 1.0:
        raise ValueError(f"projection_mix must lie in (0, 1], got {mix!r}")


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
        weights = np.asarray(weights)
        if weights.dtype.kind not in "fiu":
            # A cast would drop the imaginary part of complex weights, or read
            # strings as numbers, without a word.
            raise ValueError(
                f"projection weights must be real numbers, got dtype {weights.dtype}"
            )
        weights = np.ascontiguousarray(weights, dtype=np.float32)
        if weights.ndim != 2 or weights.shape[0] == 0 or weights.shape[1] == 0:
            raise ValueError(
                f"projection weights must be a non-empty (width, tags) array, got "
                f"shape {weights.shape}"
            )
        if not np.isfinite(weights).all():
            raise ValueError("projection weights hold NaN or infinite values")
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
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(
                f"embeddings must be a non-empty (photos, width) array, got "
                f"shape {embeddings.shape}"
            )
        if labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"{labels.shape[0]} label rows for {embeddings.shape[0]} embeddings"
            )
        if not np.isfinite(embeddings).all():
            raise ValueError("embeddings hold NaN or infinite values")
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
        try:
            arrays = np.load(path, allow_pickle=False)
        except EOFError:
            raise ValueError(f"{path} is empty") from None
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            # A bad file, not a bad argument: ValueError, as for other damage.
            raise ValueError(  # noqa: TRY004
                f"{path} is a single array, not an .npz archive"
            )
        with arrays:
            missing = {"weights", "mix"} - set(arrays.files)
            if missing:
                raise ValueError(f"{path} lacks {', '.join(sorted(missing))}")
            weights, mix = arrays["weights"], arrays["mix"]
        if mix.shape != () or mix.dtype.kind not in "fiu":
            raise ValueError(
                f"{path}: mix must be a single real number, got an array of "
                f"shape {mix.shape} and dtype {mix.dtype}"
            )
        return cls(weights, float(mix))
