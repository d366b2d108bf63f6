"""Scoring an index on the photos its build held out."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .build import embedding_keys, embedding_store_for, held_out_ids
from .dataset import read_collection
from .metrics import evaluate
from .suggester import Suggestion, TagSuggester
from .voting import tag_prior

__all__ = ["HoldoutEvaluation", "evaluate_holdout"]

logger = logging.getLogger(__name__)


@dataclass
class HoldoutEvaluation:
    """Suggestions for the held-out photos, their true hashtags, and the metrics."""

    suggestions: list[Suggestion]
    true_tags: list[list[str]]
    metrics: dict[str, float]
    skipped: int
    popularity_metrics: dict[str, float]
    """The floor: the same metrics when every photo gets the index's most
    frequent hashtags."""


def evaluate_holdout(
    index_dir: str | os.PathLike,
    *,
    suggester: TagSuggester | None = None,
    top: int = 5,
) -> HoldoutEvaluation:
    """Suggest hashtags for every held-out photo of a build and score them.

    The held-out photos' embeddings come from the build's cache, so nothing is
    decoded again.

    Raises:
        ValueError: the index was built without a held-out part.
    """
    index_dir = Path(index_dir)
    if suggester is None:
        suggester = TagSuggester.load(index_dir)
    index = suggester.index
    collection = read_collection(index.data_root)
    test_ids = held_out_ids(index, collection)
    if len(test_ids) == 0:
        raise ValueError(
            f"{index_dir} has no held-out photos; build it with --holdout 0.2 to "
            "keep a part of the collection for evaluation"
        )
    store = embedding_store_for(index_dir, suggester.encoder)
    embeddings, found = store.get(embedding_keys(collection.subset(test_ids)))
    if not found.all():
        logger.warning(
            "%d held-out photos have no embedding (unreadable at build time, or "
            "changed since); they are left out of the metrics",
            int((~found).sum()),
        )
    test_ids = test_ids[found]
    embeddings = embeddings[found]

    truth = collection.label_matrix()[test_ids]
    scores, _, _ = suggester.score(embeddings)
    popularity = np.tile(tag_prior(index.labels), (len(test_ids), 1))
    suggestions = suggester.suggest_embeddings(
        embeddings, top, names=[collection.paths[i] for i in test_ids]
    )
    return HoldoutEvaluation(
        suggestions=suggestions,
        true_tags=[collection.tags[i] for i in test_ids],
        metrics=evaluate(scores, truth),
        skipped=int((~found).sum()),
        popularity_metrics=evaluate(popularity, truth),
    )
