"""Embedding many photos: decoding in worker processes, chunked and resumable.

Photos are decoded and preprocessed in DataLoader worker processes while the
encoder runs on the previous batch; the measured overlap is recorded in
``docs/performance.md``. Finished embeddings are written to an
:class:`EmbeddingStore` in chunks as they are computed, keyed by photo path, so
a build that is interrupted resumes with the photos it has not done yet. A
photo that cannot be read is skipped and reported with its reason; it never
stops the job.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .files import write_atomically
from .images import PhotoError, load_photo
from .threads import torch_threads, usable_cores

__all__ = [
    "CPU_BATCH_SIZE",
    "CUDA_BATCH_SIZE",
    "EmbeddingResult",
    "EmbeddingStore",
    "PhotoDataset",
    "default_batch_size",
    "default_workers",
    "embed_photos",
]

logger = logging.getLogger(__name__)

STORE_FORMAT_VERSION = 1

CPU_BATCH_SIZE = 8
"""Photos per forward pass on the CPU. Measured with efficientnet-lite0 on 2 cores
(``docs/performance.md``): batches of 8 ran at 36 photos/s, 16 at 33, 32 at 28
and 64 at 24; a large batch's activations no longer fit the CPU caches."""

CUDA_BATCH_SIZE = 256
"""Photos per forward pass on a GPU.

Limitation: not measured yet; ``scripts/bench_gpu.py`` compares 64 to 512.
"""
_CHUNK_PATTERN = re.compile(r"chunk-(\d{6})\.npz")

ProgressCallback = Callable[[int, int], None]


@dataclass
class EmbeddingResult:
    """Embeddings of a list of photos, in the order they were given.

    Attributes:
        vectors: ``(n, d) float32``; unit rows where ``ok`` is True, zeros else.
        ok: ``(n,) bool``, False for a photo that could not be embedded.
        failures: photo key to the reason it was skipped.
    """

    vectors: np.ndarray
    ok: np.ndarray
    failures: dict[str, str] = field(default_factory=dict)


class PhotoDataset(Dataset):
    """Photos decoded and preprocessed for an encoder, one item per photo.

    An item is ``(position, tensor, error)``: the tensor is ``(3, H, W) float32``
    and ``error`` is None, or the tensor is None and ``error`` says why the photo
    could not be read.
    """

    def __init__(self, sources: Sequence[Any], preprocess: Callable) -> None:
        self.sources = sources
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = load_photo(self.sources[position])
            return position, self.preprocess(image), None
        except PhotoError as error:
            return position, None, error.reason


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> dict:
    good = [(position, tensor) for position, tensor, _ in items if tensor is not None]
    return {
        "positions": [position for position, _ in good],
        "pixels": torch.stack([tensor for _, tensor in good]) if good else None,
        "failures": [(position, error) for position, _, error in items if error],
    }


# How much lower than the encoder's the decoding workers' CPU priority is.
_WORKER_NICENESS = 10


def _set_up_worker(_: int) -> None:
    # Each worker decodes one photo at a time; letting torch start a thread pool
    # per worker would only fight the encoder for the same cores.
    torch.set_num_threads(1)
    # Decoding takes a fraction of the CPU the encoder takes. At a lower
    # priority a worker runs in the gaps the encoder's threads leave, instead of
    # taking a core from one of them in the middle of a parallel step, where
    # the other then waits. On 2 cores this raised the build from 0.73 to 1.02
    # of the encoder's own speed (medians of 4 rounds, docs/performance.md).
    if hasattr(os, "nice"):
        os.nice(_WORKER_NICENESS)


def default_batch_size(device: str | torch.device = "cpu") -> int:
    """Photos per forward pass: :data:`CUDA_BATCH_SIZE` on CUDA, else the CPU's."""
    return CUDA_BATCH_SIZE if torch.device(device).type == "cuda" else CPU_BATCH_SIZE


def default_workers(device: str | torch.device = "cpu") -> int:
    """Decoding processes beside the encoder, at least 1.

    On the CPU one worker per spare core, at most 4: decoding a photo costs
    far less than encoding it there. A GPU encodes faster than one core decodes,
    so on CUDA every spare core decodes, up to 16.
    """
    spare = usable_cores() - 1
    limit = 16 if torch.device(device).type == "cuda" else 4
    return max(1, min(limit, spare))


def iterate_batches(
    sources: Sequence[Any],
    preprocess: Callable,
    *,
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
):
    """Yield collated batches of decoded photos; see :class:`PhotoDataset`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    if num_workers == 0:
        yield from _decode_here(PhotoDataset(sources, preprocess), batch_size)
        return
    loader = DataLoader(
        PhotoDataset(sources, preprocess),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=_set_up_worker,
        pin_memory=pin_memory,
        prefetch_factor=4,
        persistent_workers=False,
    )
    yield from loader


def _decode_here(dataset: PhotoDataset, batch_size: int):
    """Collated batches decoded in this process, one torch thread at a time.

    The tensor steps of preprocessing are too small to gain from threads; with
    torch's default pool they took 60 ms a photo instead of 1 ms on a 2-core
    machine that was busy with another program. The thread count is restored
    before each batch is handed on, so the encoder gets its own.
    """
    for start in range(0, len(dataset), batch_size):
        positions = range(start, min(start + batch_size, len(dataset)))
        with torch_threads(1):
            items = [dataset[position] for position in positions]
        yield _collate(items)


class EmbeddingStore:
    """Embeddings of one encoder, saved in numbered chunk files keyed by photo.

    Args:
        directory: the store's folder; created when missing.
        encoder: canonical name of the encoder that makes the embeddings.
        width: their width d.

    Raises:
        ValueError: the folder already holds embeddings of another encoder or
            width (nothing in it is changed).
    """

    def __init__(
        self, directory: str | os.PathLike, *, encoder: str, width: int
    ) -> None:
        self.directory = Path(directory)
        self.encoder = encoder
        self.width = width
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest_path = self.directory / "manifest.json"
        manifest = {
            "format_version": STORE_FORMAT_VERSION,
            "encoder": encoder,
            "width": width,
        }
        if manifest_path.is_file():
            existing = json.loads(manifest_path.read_text(encoding="utf-8"))
            if existing != manifest:
                raise ValueError(
                    f"{self.directory} holds embeddings made by "
                    f"{existing.get('encoder')!r} (width {existing.get('width')}), "
                    f"not by {encoder!r} (width {width}); "
                    "use another folder for this encoder"
                )
        else:
            write_atomically(manifest_path, json.dumps(manifest).encode("utf-8"))
        self._index: dict[str, tuple[Path, int]] | None = None

    @staticmethod
    def folder_name(encoder: str) -> str:
        """A file-system-safe folder name for an encoder's embeddings."""
        readable = re.sub(r"[^A-Za-z0-9.-]+", "_", encoder).strip("_")[:48]
        digest = hashlib.sha256(encoder.encode("utf-8")).hexdigest()[:8]
        return f"{readable}-{digest}"

    def _chunk_files(self) -> list[Path]:
        return sorted(
            path
            for path in self.directory.iterdir()
            if _CHUNK_PATTERN.fullmatch(path.name)
        )

    def _read_chunk(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        with np.load(path, allow_pickle=False) as arrays:
            return arrays["keys"], arrays["vectors"]

    def stored_keys(self) -> dict[str, tuple[Path, int]]:
        """Photo key to the chunk file and row holding its embedding."""
        if self._index is None:
            index: dict[str, tuple[Path, int]] = {}
            for path in self._chunk_files():
                try:
                    keys, vectors = self._read_chunk(path)
                except (OSError, ValueError, KeyError) as error:
                    # A chunk is written aside and renamed into place, so a bad
                    # one was damaged after the fact; its photos are redone.
                    logger.warning("ignoring unreadable chunk %s: %s", path, error)
                    continue
                if vectors.ndim != 2 or vectors.shape != (len(keys), self.width):
                    logger.warning("ignoring chunk %s of shape %s", path, vectors.shape)
                    continue
                for row, key in enumerate(keys.tolist()):
                    index[key] = (path, row)
            self._index = index
        return self._index

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> Path:
        """Save one chunk: ``keys`` and their ``(len(keys), d) float32`` embeddings."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.width):
            raise ValueError(
                f"expected embeddings of shape ({len(keys)}, {self.width}), "
                f"got {vectors.shape}"
            )
        existing = self._chunk_files()
        number = (
            int(_CHUNK_PATTERN.fullmatch(existing[-1].name).group(1)) + 1
            if existing
            else 0
        )
        path = self.directory / f"chunk-{number:06d}.npz"
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.asarray(list(keys), dtype=str), vectors=vectors)
        write_atomically(path, buffer.getvalue())
        index = self.stored_keys()
        for row, key in enumerate(keys):
            index[key] = (path, row)
        return path

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Stored embeddings of ``keys``.

        Returns:
            ``(vectors, found)``: ``(n, d) float32`` (zeros where not stored) and
            ``(n,) bool``.
        """
        index = self.stored_keys()
        vectors = np.zeros((len(keys), self.width), dtype=np.float32)
        found = np.zeros(len(keys), dtype=bool)
        by_chunk: dict[Path, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            if key in index:
                chunk, row = index[key]
                by_chunk.setdefault(chunk, []).append((position, row))
        for chunk, pairs in by_chunk.items():
            _, chunk_vectors = self._read_chunk(chunk)
            positions, rows = (np.asarray(column) for column in zip(*pairs))
            vectors[positions] = chunk_vectors[rows]
            found[positions] = True
        return vectors, found


def embed_photos(
    sources: Sequence[Any],
    encoder,
    *,
    keys: Sequence[str] | None = None,
    store: EmbeddingStore | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    chunk_size: int = 512,
    on_progress: ProgressCallback | None = None,
) -> EmbeddingResult:
    """Embed photos, reusing and extending ``store`` when one is given.

    Args:
        sources: photo paths (or PIL images or arrays when no store is used).
        encoder: an :class:`~harrison_knn.encoders.Encoder`.
        keys: a name per photo for the store and the failure report; defaults
            to ``str(source)``.
        store: where finished embeddings are saved and looked up.
        batch_size: photos per forward pass; None picks
            :func:`default_batch_size`.
        num_workers: decoding processes; None picks :func:`default_workers`.
        chunk_size: photos per chunk file written to the store.
        on_progress: called as ``on_progress(done, total)`` after each batch.

    Returns:
        An :class:`EmbeddingResult` in the order of ``sources``.
    """
    if keys is None:
        keys = [str(source) for source in sources]
    if len(keys) != len(sources):
        raise ValueError(f"{len(keys)} keys for {len(sources)} photos")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if batch_size is None:
        batch_size = default_batch_size(encoder.device)
    if num_workers is None:
        num_workers = default_workers(encoder.device)

    total = len(sources)
    if store is not None:
        vectors, ok = store.get(keys)
    else:
        vectors = np.zeros((total, encoder.width), dtype=np.float32)
        ok = np.zeros(total, dtype=bool)
    pending = np.flatnonzero(~ok)
    if ok.any():
        logger.info(
            "%d of %d photos already embedded; %d to go", ok.sum(), total, len(pending)
        )
    done = total - len(pending)
    if on_progress is not None:
        on_progress(done, total)

    failures: dict[str, str] = {}
    chunk_positions: list[int] = []
    chunk_vectors: list[np.ndarray] = []

    def flush() -> None:
        if store is not None and chunk_positions:
            store.add([keys[i] for i in chunk_positions], np.concatenate(chunk_vectors))
        chunk_positions.clear()
        chunk_vectors.clear()

    batches = iterate_batches(
        [sources[i] for i in pending],
        encoder.preprocess,
        batch_size=batch_size,
        num_workers=num_workers if len(pending) > batch_size else 0,
        pin_memory=encoder.device.type == "cuda",
    )
    for batch in batches:
        positions = [int(pending[p]) for p in batch["positions"]]
        for p, reason in batch["failures"]:
            key = keys[int(pending[p])]
            failures[key] = reason
            logger.warning("skipped %s: %s", key, reason)
        if positions:
            embeddings = encoder.encode_batch(batch["pixels"])
            vectors[positions] = embeddings
            ok[positions] = True
            chunk_positions.extend(positions)
            chunk_vectors.append(embeddings)
            if len(chunk_positions) >= chunk_size:
                flush()
        done += len(batch["positions"]) + len(batch["failures"])
        if on_progress is not None:
            on_progress(done, total)
    flush()
    return EmbeddingResult(vectors=vectors, ok=ok, failures=failures)
