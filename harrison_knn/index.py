"""The saved index: photo embeddings in FAISS, their hashtags and metadata.

An index folder holds:

- ``metadata.json``: human-readable; format version, encoder name and width,
  vocabulary, photo paths, photo count, build time, voting defaults, and the
  names and SHA-256 checksums of the array files below.
- ``vectors-<digest>.faiss``: a FAISS inner-product index of the searched
  vectors (unit rows, except as below).
- ``labels-<digest>.npz``: the photo-by-hashtag matrix as plain CSR arrays.
- ``projection-<digest>.npz``, when the build chose a learnt search space: the
  :class:`~harrison_knn.metric.LabelProjection` that maps an embedding to the
  vector searched; the FAISS index then holds the mapped vectors.
- ``prototypes-<digest>.npz``, when the build chose to pull indexed photos
  toward their hashtags' prototypes: the
  :class:`~harrison_knn.metric.TagPrototypes`. The FAISS index then holds the
  pulled rows, which are not of unit length; the photos' own vectors are taken
  back out of them with the hashtags.

Array files carry their own digest in their name and are written before the
metadata that points to them; the metadata is replaced by an atomic rename.
A build killed at any moment therefore leaves either the previous complete
index or the new complete one, never a mixture.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from .files import write_atomically
from .metric import LabelProjection, TagPrototypes
from .voting import neighbour_gram

__all__ = [
    "FORMAT_VERSION",
    "METADATA_FILE",
    "IndexFormatError",
    "TagIndex",
    "gpu_available",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"


class IndexFormatError(ValueError):
    """An index folder that is missing, damaged or does not fit the request."""


def gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass
class TagIndex:
    """Embeddings of tagged photos, searchable by inner product.

    Attributes:
        vectors: FAISS index of ``(n_photos, searched width)`` float32 rows, of
            unit length unless pulled toward prototypes.
        labels: ``(n_photos, n_tags)`` float32 0/1 CSR matrix.
        vocabulary: hashtag names in column order of ``labels``.
        paths: photo paths, relative to ``data_root``, in row order.
        encoder: canonical name of the encoder that made the embeddings.
        data_root: the collection folder the photos were read from.
        built_at: ISO 8601 time of the build, UTC.
        settings: voting defaults and build facts kept with the index.
        projection: the map from an embedding to the searched vector, or None
            when the embeddings are searched as they are.
        prototypes: the pull of indexed photos toward their hashtags'
            prototypes, or None when they are stored as they are.
    """

    vectors: faiss.Index
    labels: sp.csr_matrix
    vocabulary: list[str]
    paths: list[str]
    encoder: str
    data_root: str = ""
    built_at: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    projection: LabelProjection | None = None
    prototypes: TagPrototypes | None = None

    def __post_init__(self) -> None:
        n_photos = self.vectors.ntotal
        searched = self.vectors.d
        if self.projection is not None and self.projection.output_width != searched:
            raise IndexFormatError(
                f"the projection gives vectors of width "
                f"{self.projection.output_width} but the index holds width {searched}"
            )
        if self.prototypes is not None and (
            self.prototypes.width != searched
            or self.prototypes.tag_count != len(self.vocabulary)
        ):
            raise IndexFormatError(
                f"the prototypes map {self.prototypes.tag_count} hashtags to width "
                f"{self.prototypes.width}, but the index holds "
                f"{len(self.vocabulary)} hashtags and width {searched}"
            )
        if self.labels.shape != (n_photos, len(self.vocabulary)):
            raise IndexFormatError(
                f"labels have shape {self.labels.shape} but the index holds "
                f"{n_photos} photos and {len(self.vocabulary)} hashtags"
            )
        if len(self.paths) != n_photos:
            raise IndexFormatError(
                f"{len(self.paths)} photo paths for {n_photos} indexed vectors"
            )
        self._on_gpu = False
        # faiss GPU indexes and their StandardGpuResources must not be used by
        # two threads at once; CPU indexes may, and are searched without it.
        self._gpu_lock = threading.Lock()
        # The stored rows, readable without a copy while the CPU index lives;
        # the reconstruction weighting reads its neighbours' rows from here.
        self._cpu_vectors = self.vectors

    @property
    def width(self) -> int:
        """Embedding width d, the encoder's; the searched width may be larger."""
        if self.projection is not None:
            return self.projection.input_width
        return self.vectors.d

    def __len__(self) -> int:
        return self.vectors.ntotal

    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray,
        labels: sp.spmatrix | np.ndarray,
        *,
        vocabulary: list[str],
        paths: list[str],
        encoder: str,
        data_root: str | os.PathLike = "",
        settings: dict[str, Any] | None = None,
        projection: LabelProjection | None = None,
        prototypes: TagPrototypes | None = None,
    ) -> TagIndex:
        """Build an exact inner-product index.

        Args:
            embeddings: ``(n, d) float32``, unit rows.
            labels: ``(n, n_tags)`` 0/1 matrix, sparse or dense.
            vocabulary: ``n_tags`` hashtag names.
            paths: ``n`` photo paths.
            encoder: canonical encoder name.
            data_root: folder the paths are relative to.
            settings: voting defaults to keep with the index.
            projection: when given, the index holds ``projection.transform``
                of the embeddings, and queries are mapped the same way.
            prototypes: when given, fitted on the (mapped) embeddings, the
                index holds them pulled toward their hashtags' prototypes.

        Raises:
            ValueError: embeddings not a 2-D array or not of unit length.
        """
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2:
            raise ValueError(
                f"embeddings must be a (photos, width) array, got {embeddings.shape}"
            )
        norms = np.linalg.norm(embeddings, axis=1)
        if embeddings.shape[0] and not np.allclose(norms, 1.0, atol=1e-3):
            worst = int(np.argmax(np.abs(norms - 1.0)))
            raise ValueError(
                f"embeddings must have unit rows; row {worst} has length "
                f"{norms[worst]:.4f}"
            )
        labels = sp.csr_matrix(labels, dtype=np.float32, copy=True)
        # A stored zero is no hashtag: voting ignores it, but the neighbours'
        # hashtag lists read the stored entries.
        labels.eliminate_zeros()
        if labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"{labels.shape[0]} label rows for {embeddings.shape[0]} embeddings"
            )
        if projection is not None:
            embeddings = projection.transform(embeddings)
        if prototypes is not None:
            embeddings = prototypes.apply(embeddings, labels)
        vectors = faiss.IndexFlatIP(embeddings.shape[1])
        vectors.add(embeddings)
        return cls(
            vectors=vectors,
            labels=labels,
            vocabulary=list(vocabulary),
            paths=list(paths),
            encoder=encoder,
            data_root=str(data_root),
            built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            settings=dict(settings or {}),
            projection=projection,
            prototypes=prototypes,
        )

    def to_gpu(self) -> bool:
        """Move the vectors to the GPU when faiss can; returns whether it did."""
        if self._on_gpu or not gpu_available():
            return self._on_gpu
        self._gpu_resources = faiss.StandardGpuResources()
        self.vectors = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.vectors)
        self._on_gpu = True
        logger.info("index of %d photos moved to the GPU", len(self))
        return True

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Find the k most similar indexed photos of each query.

        Args:
            queries: ``(q, d) float32`` unit rows: embeddings, which the index's
                projection maps before the search when it has one.
            k: neighbours wanted, >= 1. When the index holds fewer photos, the
                missing slots have id ``-1`` and similarity ``-inf``.

        Returns:
            ``(similarities, ids)``: ``(q, k) float32`` and ``(q, k) int64``,
            nearest first.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.width:
            raise ValueError(
                f"queries must have shape (n, {self.width}), got {queries.shape}"
            )
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if queries.shape[0] == 0:
            return (
                np.zeros((0, k), dtype=np.float32),
                np.zeros((0, k), dtype=np.int64),
            )
        if self.projection is not None:
            queries = self.projection.transform(queries)
        with self._exclusive_on_gpu():
            similarities, ids = self.vectors.search(queries, k)
        similarities[ids < 0] = -np.inf
        return similarities, ids.astype(np.int64)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of the given rows, ``(len(ids), searched width) float32``.

        With a projection these are the mapped vectors, and with prototypes the
        pulled ones, not the embeddings.
        """
        ids = np.asarray(ids)
        if ids.size and ids.dtype.kind not in "iu":
            # A boolean mask would be read as rows 0 and 1, and 2.9 as row 2.
            raise ValueError(f"row ids must be whole numbers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            bad = int(ids.min() if ids.min() < 0 else ids.max())
            raise ValueError(f"row {bad} is outside the index of {len(self)} photos")
        return self._stored_rows()[ids]

    def embeddings(self, ids: np.ndarray) -> np.ndarray:
        """Embeddings of the given rows, ``(len(ids), width) float32`` unit rows.

        The encoder's embeddings, as queries come in: with a projection or
        prototypes they are taken back out of the stored vectors.
        """
        rows = self.reconstruct(ids)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.prototypes is not None:
            rows = self.prototypes.remove(rows, self.labels[ids])
        if self.projection is None:
            return rows
        return self.projection.embeddings_of(rows)

    def neighbour_gram(self, neighbour_ids: np.ndarray) -> np.ndarray:
        """Inner products among each query's neighbours, ``(q, k, k) float32``.

        Args:
            neighbour_ids: ``(q, k) int64`` as :meth:`search` returns them;
                ``-1`` slots get zero rows and columns.

        Raises:
            ValueError: a row outside the index.
        """
        return neighbour_gram(self._stored_rows(), neighbour_ids)

    def _stored_rows(self) -> np.ndarray:
        """Every stored row, ``(n, searched width) float32``, without a copy."""
        index = self._cpu_vectors
        if not hasattr(index, "get_xb"):
            # Not a flat index (one written by other code): copy its rows once.
            if not hasattr(self, "_rows"):
                self._rows = index.reconstruct_n(0, index.ntotal)
            return self._rows
        return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(
            index.ntotal, index.d
        )

    def _exclusive_on_gpu(self) -> contextlib.AbstractContextManager:
        return self._gpu_lock if self._on_gpu else contextlib.nullcontext()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index into ``directory`` atomically; see the module notes.

        Other files in the folder (an embedding cache, a build report) are kept.
        Returns the folder.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # The CPU index is kept beside a GPU copy, so nothing is copied back.
        vectors = self._cpu_vectors

        vectors_name = _write_content_named(
            directory, "vectors", ".faiss", faiss.serialize_index(vectors).tobytes()
        )
        labels_name = _write_content_named(
            directory, "labels", ".npz", _csr_to_npz_bytes(self.labels)
        )
        names = {"vectors": vectors_name, "labels": labels_name}
        if self.projection is not None:
            names["projection"] = _write_content_named(
                directory, "projection", ".npz", self.projection.to_bytes()
            )
        if self.prototypes is not None:
            names["prototypes"] = _write_content_named(
                directory, "prototypes", ".npz", self.prototypes.to_bytes()
            )
        metadata = {
            "format_version": FORMAT_VERSION,
            "encoder": self.encoder,
            "width": self.width,
            "photo_count": len(self),
            "tag_count": len(self.vocabulary),
            "built_at": self.built_at,
            "data_root": self.data_root,
            "settings": self.settings,
            "files": {
                role: {"name": name, "sha256": _digest_of(directory / name)}
                for role, name in names.items()
            },
            "vocabulary": self.vocabulary,
            "photos": self.paths,
        }
        write_atomically(
            directory / METADATA_FILE,
            json.dumps(metadata, indent=1, ensure_ascii=False).encode("utf-8"),
        )
        _remove_unreferenced(directory, set(names.values()))
        logger.info("index of %d photos saved to %s", len(self), directory)
        return directory

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        encoder: str | None = None,
        width: int | None = None,
        verify: bool = True,
    ) -> TagIndex:
        """Read an index saved by :meth:`save`.

        Args:
            directory: the index folder.
            encoder: when given, the encoder name the index must have been built
                with.
            width: when given, the embedding width it must have.
            verify: check the array files against their recorded checksums.

        Raises:
            FileNotFoundError: no folder or no metadata file there.
            IndexFormatError: unknown format version, damaged or missing files,
                or an encoder or width other than the one asked for.
        """
        directory = Path(directory)
        metadata_path = directory / METADATA_FILE
        if not directory.is_dir():
            raise FileNotFoundError(
                f"no index at {directory}: build one with "
                f"'harrison-knn build DATA_DIR --index {directory}'"
            )
        if not metadata_path.is_file():
            raise FileNotFoundError(
                f"{metadata_path} is missing: {directory} is not a complete index; "
                "rebuild it with 'harrison-knn build'"
            )
        metadata = _read_metadata(metadata_path)

        if encoder is not None and metadata["encoder"] != encoder:
            raise IndexFormatError(
                f"{directory} was built with encoder {metadata['encoder']!r}, not "
                f"{encoder!r}; query it with the same encoder or rebuild the index"
            )
        if width is not None and metadata["width"] != width:
            raise IndexFormatError(
                f"{directory} holds embeddings of width {metadata['width']}, but the "
                f"encoder gives width {width}; rebuild the index with this encoder"
            )

        files = {}
        for role in _FILE_ROLES:
            entry = metadata["files"].get(role)
            if entry is None:
                continue
            path = directory / entry["name"]
            if path.parent != directory:
                raise IndexFormatError(
                    f"{metadata_path}: bad file name {entry['name']!r}"
                )
            if not path.is_file():
                raise IndexFormatError(
                    f"{path} is missing; rebuild the index with 'harrison-knn build'"
                )
            if verify and _digest_of(path) != entry["sha256"]:
                raise IndexFormatError(
                    f"{path} is damaged (its checksum does not match {metadata_path}); "
                    "rebuild the index with 'harrison-knn build'"
                )
            files[role] = path

        try:
            vectors = faiss.read_index(str(files["vectors"]))
            labels = _csr_from_npz(files["labels"])
            projection = (
                LabelProjection.from_file(files["projection"])
                if "projection" in files
                else None
            )
            prototypes = (
                TagPrototypes.from_file(files["prototypes"])
                if "prototypes" in files
                else None
            )
        except (
            RuntimeError,
            ValueError,
            OSError,
            KeyError,
            EOFError,
            zipfile.BadZipFile,
        ) as error:
            raise IndexFormatError(
                f"cannot read the index in {directory}: {error}"
            ) from error

        _check_space_files(metadata, metadata_path, projection, prototypes)
        searched = metadata["width"]
        if projection is not None:
            if projection.input_width != metadata["width"]:
                raise IndexFormatError(
                    f"{files['projection']} maps embeddings of width "
                    f"{projection.input_width}, but {metadata_path} says width "
                    f"{metadata['width']}"
                )
            searched = projection.output_width
        if vectors.d != searched or vectors.ntotal != metadata["photo_count"]:
            raise IndexFormatError(
                f"{files['vectors']} holds {vectors.ntotal} vectors of width "
                f"{vectors.d}, "
                f"but {metadata_path} says {metadata['photo_count']} of width "
                f"{searched}"
            )
        try:
            return cls(
                vectors=vectors,
                labels=labels,
                vocabulary=metadata["vocabulary"],
                paths=metadata["photos"],
                encoder=metadata["encoder"],
                data_root=metadata.get("data_root", ""),
                built_at=metadata.get("built_at", ""),
                settings=metadata.get("settings", {}),
                projection=projection,
                prototypes=prototypes,
            )
        except IndexFormatError as error:
            raise IndexFormatError(f"{directory}: {error}") from error


_FILE_ROLES = ("vectors", "labels", "projection", "prototypes")
_OPTIONAL_FILES = {"projection", "prototypes"}

# Every entry the reader relies on, with the JSON type it must have: a metadata
# file edited by hand must not load with a string where the photo list belongs.
_REQUIRED_ENTRIES = {
    "encoder": "a string",
    "width": "a whole number",
    "photo_count": "a whole number",
    "files": "an object",
    "vocabulary": "a list of strings",
    "photos": "a list of strings",
}
_OPTIONAL_ENTRIES = {
    "data_root": "a string",
    "built_at": "a string",
    "settings": "an object",
}


def _check_space_files(metadata, metadata_path, projection, prototypes) -> None:
    """Refuse an index whose projection or prototypes file disagrees with the
    search space its voting settings record, or is missing: the vectors would
    be searched, and the embeddings taken back out of them, in the wrong space.
    """
    voting = metadata.get("settings", {}).get("voting", {})
    if not isinstance(voting, dict):
        return
    recorded = {
        "projection_mix": (voting.get("projection_mix"), 1.0, projection, "mix"),
        "prototype_pull": (voting.get("prototype_pull"), 0.0, prototypes, "pull"),
    }
    for name, (setting, neutral, part, attribute) in recorded.items():
        if setting is None:
            continue  # written before this setting existed
        if isinstance(setting, bool) or not isinstance(setting, (int, float)):
            raise IndexFormatError(
                f"{metadata_path}: settings.voting.{name} should be a number, got "
                f"{setting!r}"
            )
        found = neutral if part is None else getattr(part, attribute)
        if not np.isclose(found, setting, rtol=1e-6, atol=0.0):
            kind = "projection" if name == "projection_mix" else "prototypes"
            raise IndexFormatError(
                f"{metadata_path} records {name} {setting!r}, but the index's "
                f"{kind} file gives {found!r}"
                + (" (no such file is listed)" if part is None else "")
                + "; rebuild the index with 'harrison-knn build'"
            )


def _has_json_type(value: Any, expected: str) -> bool:
    if expected == "a string":
        return isinstance(value, str)
    if expected == "a whole number":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "an object":
        return isinstance(value, dict)
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IndexFormatError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(metadata, dict):
        raise IndexFormatError(f"{path} does not hold a JSON object")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} has index format version {version!r}; this harrison-knn reads "
            f"version {FORMAT_VERSION}. Rebuild the index with this version"
        )
    missing = [key for key in _REQUIRED_ENTRIES if key not in metadata]
    if missing:
        raise IndexFormatError(f"{path} lacks the entries {', '.join(missing)}")
    expected_types = {**_REQUIRED_ENTRIES, **_OPTIONAL_ENTRIES}
    for key, expected in expected_types.items():
        if key in metadata and not _has_json_type(metadata[key], expected):
            raise IndexFormatError(
                f"{path}: the entry {key!r} should be {expected}, "
                f"got {type(metadata[key]).__name__}"
            )
    for role in _FILE_ROLES:
        entry = metadata["files"].get(role)
        if entry is None and role in _OPTIONAL_FILES:
            continue
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("sha256"), str)
        ):
            raise IndexFormatError(
                f"{path}: the entry files.{role} should be an object with the "
                f"strings 'name' and 'sha256', got {entry!r}"
            )
    return metadata


def _csr_to_npz_bytes(labels: sp.csr_matrix) -> bytes:
    import io

    labels = sp.csr_matrix(labels)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        indptr=labels.indptr.astype(np.int64),
        indices=labels.indices.astype(np.int32),
        shape=np.asarray(labels.shape, dtype=np.int64),
    )
    return buffer.getvalue()


def _csr_from_npz(path: Path) -> sp.csr_matrix:
    with np.load(path, allow_pickle=False) as arrays:
        indptr, indices, shape = arrays["indptr"], arrays["indices"], arrays["shape"]
    n_rows, n_columns = (int(value) for value in shape)
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_columns))


def _digest_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_content_named(
    directory: Path, stem: str, suffix: str, content: bytes
) -> str:
    name = f"{stem}-{hashlib.sha256(content).hexdigest()[:16]}{suffix}"
    if not (directory / name).is_file():
        write_atomically(directory / name, content)
    return name


def _remove_unreferenced(directory: Path, keep: set[str]) -> None:
    for pattern in (
        "vectors-*.faiss",
        "labels-*.npz",
        "projection-*.npz",
        "prototypes-*.npz",
    ):
        for path in directory.glob(pattern):
            if path.name not in keep:
                path.unlink(missing_ok=True)
