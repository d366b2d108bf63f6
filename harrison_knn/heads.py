"""Linear heads saved beside an index: fitted on its photos, loaded by name.

A head is fitted on the same embeddings and hashtags that the index's voting
reads, and saved in ``<index>/heads/<name>/`` (see
:meth:`harrison_knn.linear.LogisticHead.save`). Its scores have the shape and
meaning of voting scores, ``(n_queries, n_tags) float32``, higher is better,
columns in the index's vocabulary order, so they rank and evaluate alike.

Example:
    >>> from harrison_knn.heads import fit_head, load_head
    >>> fit_head("indexes/flickr", "logistic")                 # doctest: +SKIP
    >>> head = load_head("indexes/flickr", "logistic")          # doctest: +SKIP
    >>> head.predict_scores(embeddings).shape                   # doctest: +SKIP
    (3, 997)
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .index import IndexFormatError, TagIndex
from .linear import LogisticHead, TorchLinearHead

__all__ = ["HEADS", "HEADS_FOLDER", "fit_head", "head_folder", "load_head"]

logger = logging.getLogger(__name__)

HEADS = {"logistic": LogisticHead, "torch-linear": TorchLinearHead}
"""Head name to its class; the name is also its folder under ``heads/``."""

HEADS_FOLDER = "heads"


def head_folder(index_dir: str | os.PathLike, name: str) -> Path:
    """The folder of head ``name`` inside an index folder.

    Raises:
        ValueError: ``name`` is not one of :data:`HEADS`.
    """
    _check_name(name)
    return Path(index_dir) / HEADS_FOLDER / name


def fit_head(
    index_dir: str | os.PathLike, name: str, **params: Any
) -> LogisticHead | TorchLinearHead:
    """Fit head ``name`` on every photo of a saved index and save it beside it.

    The embeddings are read back from the index itself, so a head always sees
    exactly the photos that vote.

    Args:
        index_dir: an index folder written by ``harrison-knn build``.
        name: one of :data:`HEADS`.
        params: hyper-parameters of the head's class, e.g. ``C=3.0``.

    Returns:
        The fitted head, already saved in :func:`head_folder`.

    Raises:
        ValueError: unknown head name or hyper-parameter.
        FileNotFoundError, IndexFormatError: no readable index there.
    """
    folder = head_folder(index_dir, name)
    index = TagIndex.load(index_dir)
    embeddings = index.embeddings(np.arange(len(index)))
    logger.info(
        "fitting the %s head on the %d photos x %d of %s",
        name,
        len(index),
        index.width,
        index_dir,
    )
    started = time.perf_counter()
    head = HEADS[name](**params).fit(embeddings, index.labels)
    logger.info("fitted the %s head in %.1f s", name, time.perf_counter() - started)

    # Saved aside and renamed into place, so a killed fit never leaves half a
    # head where a complete one is expected.
    partial = folder.with_name(f".{name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    head.save(partial)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    logger.info("saved the %s head to %s", name, folder)
    return head


def load_head(
    index_dir: str | os.PathLike, name: str
) -> LogisticHead | TorchLinearHead:
    """Read head ``name`` saved beside an index by :func:`fit_head`.

    Raises:
        FileNotFoundError: no such head has been fitted for this index.
        IndexFormatError: the head does not fit the index's vocabulary or
            embedding width (the index was rebuilt since); fit it again.
    """
    folder = head_folder(index_dir, name)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no {name} head at {folder}; fit one with "
            f"'harrison-knn benchmark --index {index_dir} --save-heads'"
        )
    head = HEADS[name].load(folder)
    index = TagIndex.load(index_dir, verify=False)
    if head.n_tags_ != len(index.vocabulary) or head.n_features_in_ != index.width:
        raise IndexFormatError(
            f"the head in {folder} scores {head.n_tags_} hashtags of width "
            f"{head.n_features_in_}, but {index_dir} has {len(index.vocabulary)} "
            f"hashtags of width {index.width}; fit the head again"
        )
    return head


def _check_name(name: str) -> None:
    if name not in HEADS:
        raise ValueError(
            f"unknown head {name!r}; choose one of {', '.join(sorted(HEADS))}"
        )
