"""Building an index from a photo collection in HARRISON layout.

The build reads the annotation files, embeds every listed photo (held-out ones
too, so they can be evaluated later without decoding them again), indexes the
training photos and writes a report of the photos it skipped. Embeddings are
cached under ``<index>/embeddings/<encoder>/`` as they are computed, so a build
that stops part-way resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import voting
from .dataset import Collection, read_collection, split_indices
from .embedding import EmbeddingStore, ProgressCallback, embed_photos
from .encoders import DEFAULT_ENCODER, Encoder, create_encoder
from .files import write_atomically
from .index import TagIndex
from .metric import check_mix, check_pull, fit_search_space
from .tuning import DEFAULT_GRID, VotingParameters, tune_voting

__all__ = [
    "REPORT_FILE",
    "BuildError",
    "BuildReport",
    "build_index",
    "embedding_keys",
    "embedding_store_for",
    "held_out_ids",
]

logger = logging.getLogger(__name__)

REPORT_FILE = "build-report.json"
DEFAULT_MAX_FAILURE_SHARE = 0.1
SKIPPED_PHOTOS_LOGGED = 20
# Below this many indexed photos, cross-validated tuning is too noisy to trust
# and the build keeps the library's default voting settings.
MIN_PHOTOS_TO_TUNE = 50


class BuildError(RuntimeError):
    """A build that cannot give a trustworthy index (too many unreadable photos)."""


@dataclass
class BuildReport:
    """What a build did; saved as ``build-report.json`` beside the index."""

    data_root: str
    encoder: str
    photos_listed: int
    photos_indexed: int
    photos_held_out: int
    photos_skipped: int
    seconds_embedding: float
    seconds_total: float
    voting: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)


def embedding_store_for(
    index_dir: str | os.PathLike, encoder: Encoder
) -> EmbeddingStore:
    """The embedding cache of ``encoder`` inside an index folder."""
    folder = Path(index_dir) / "embeddings" / EmbeddingStore.folder_name(encoder.name)
    return EmbeddingStore(folder, encoder=encoder.name, width=encoder.width)


def embedding_keys(collection: Collection) -> list[str]:
    """The key of each photo in the embedding cache: path, size, modification time.

    Keying by path alone would hand a photo replaced in place, or another
    collection's photo under the same path built into the same index folder,
    the embedding of the photo that was there before.
    """
    keys = []
    for i, path in enumerate(collection.paths):
        try:
            status = collection.photo_path(i).stat()
        except OSError:
            # An unreadable photo is never stored, so its key is never looked up.
            keys.append(path)
            continue
        keys.append(f"{path} ({status.st_size} bytes, modified {status.st_mtime_ns})")
    return keys


def held_out_ids(index: TagIndex, collection: Collection) -> np.ndarray:
    """Rows of ``collection`` that the build kept out of ``index``, ``(m,) int64``."""
    held_out = set(index.settings.get("held_out", []))
    return np.array(
        [i for i, path in enumerate(collection.paths) if path in held_out],
        dtype=np.int64,
    )


def build_index(
    data_dir: str | os.PathLike,
    index_dir: str | os.PathLike,
    *,
    encoder: Encoder | str = DEFAULT_ENCODER,
    device: str | None = None,
    holdout: float = 0,
    seed: int = 0,
    batch_size: int | None = None,
    num_workers: int | None = None,
    chunk_size: int = 512,
    max_failure_share: float = DEFAULT_MAX_FAILURE_SHARE,
    voting_settings: dict[str, Any] | None = None,
    tune: bool = True,
    on_progress: ProgressCallback | None = None,
) -> BuildReport:
    """Embed a collection and save its index.

    Args:
        data_dir: folder with ``data_list.txt``, ``tag_list.txt`` and
            ``vocab_index.txt``.
        index_dir: where the index goes (``indexes/NAME``).
        encoder: an encoder or encoder name.
        device: torch device when ``encoder`` is a name.
        holdout: photos kept out of the index for evaluation: a fraction in
            ``(0, 1)`` or a count; 0 indexes every photo.
        seed: seed of the held-out split.
        batch_size, num_workers, chunk_size: see
            :func:`harrison_knn.embedding.embed_photos`.
        max_failure_share: the build fails when a larger share of the photos
            cannot be read.
        voting_settings: voting defaults saved with the index (``k``,
            ``weighting``, ``temperature``, ``popularity_correction``,
            ``ridge``, ``projection_mix``, ``prototype_pull``, ``diversity``);
            the ones given are kept as they are and not tuned.
        tune: choose the voting settings not given by cross-validation on the
            indexed photos (see :mod:`harrison_knn.tuning`), and calibrate the
            score threshold of variable-length answers.
        on_progress: called as ``on_progress(done, total)`` while embedding.

    Returns:
        The :class:`BuildReport`, also written beside the index.

    Raises:
        BuildError: more than ``max_failure_share`` of the photos failed; the
            report is written and the embeddings already made are kept.
        ValueError: a bad failure share or voting setting, found before any
            photo is read.
    """
    started = time.perf_counter()
    if not 0 <= max_failure_share <= 1:
        raise ValueError(
            f"max_failure_share must lie in [0, 1], got {max_failure_share!r}"
        )
    _check_voting_settings(voting_settings or {})
    # Before the photos are embedded, where a user watching the command sees it.
    _warn_unused_parameters(voting_settings or {})
    collection = read_collection(data_dir)
    if isinstance(encoder, str):
        encoder = create_encoder(encoder, device=device)
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)

    if holdout:
        train_ids, test_ids = split_indices(len(collection), holdout, seed)
    else:
        train_ids = np.arange(len(collection))
        test_ids = np.zeros(0, dtype=np.int64)
    logger.info(
        "embedding %d photos of %s with %s (%d to index, %d held out)",
        len(collection),
        collection.root,
        encoder.name,
        len(train_ids),
        len(test_ids),
    )

    embedding_started = time.perf_counter()
    keys = embedding_keys(collection)
    result = embed_photos(
        [collection.photo_path(i) for i in range(len(collection))],
        encoder,
        keys=keys,
        store=embedding_store_for(index_dir, encoder),
        batch_size=batch_size,
        num_workers=num_workers,
        chunk_size=chunk_size,
        on_progress=on_progress,
    )
    seconds_embedding = time.perf_counter() - embedding_started

    indexed = train_ids[result.ok[train_ids]]
    report = BuildReport(
        data_root=str(collection.root.resolve()),
        encoder=encoder.name,
        photos_listed=len(collection),
        photos_indexed=len(indexed),
        photos_held_out=len(test_ids),
        photos_skipped=len(result.failures),
        seconds_embedding=round(seconds_embedding, 3),
        seconds_total=0.0,
        skipped=dict(
            sorted(
                (path, result.failures[key])
                for path, key in zip(collection.paths, keys)
                if key in result.failures
            )
        ),
    )
    _log_skipped(report, index_dir)
    share_failed = len(result.failures) / max(1, len(collection))
    if share_failed > max_failure_share:
        _write_report(index_dir, report, started)
        raise BuildError(
            f"{len(result.failures)} of {len(collection)} photos "
            f"({share_failed:.0%}) could not be read, more than the allowed "
            f"{max_failure_share:.0%}; see {index_dir / REPORT_FILE} for each photo "
            "and its reason, or raise --max-failures"
        )
    if len(indexed) == 0:
        _write_report(index_dir, report, started)
        raise BuildError(f"no photo of {collection.root} could be indexed")

    labels = collection.label_matrix()[indexed]
    settings = {
        "voting": _voting_settings(
            result.vectors[indexed], labels, voting_settings or {}, tune, seed
        ),
        "split": {"holdout": holdout, "seed": seed},
        "held_out": [collection.paths[i] for i in test_ids],
    }
    report.voting = settings["voting"]
    projection, prototypes = fit_search_space(
        result.vectors[indexed],
        labels,
        mix=settings["voting"]["projection_mix"],
        pull=settings["voting"]["prototype_pull"],
    )
    index = TagIndex.from_embeddings(
        result.vectors[indexed],
        labels,
        vocabulary=collection.vocabulary,
        paths=[collection.paths[i] for i in indexed],
        encoder=encoder.name,
        data_root=collection.root.resolve(),
        settings=settings,
        projection=projection,
        prototypes=prototypes,
    )
    index.save(index_dir)
    _write_report(index_dir, report, started)
    logger.info(
        "indexed %d photos in %.1f s", report.photos_indexed, report.seconds_total
    )
    return report


def _check_voting_settings(given: dict[str, Any]) -> None:
    """Refuse unknown names and values out of range, naming the setting."""
    unknown = set(given) - set(VotingParameters.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown voting settings: {', '.join(sorted(unknown))}")
    voting.check_settings(given)
    if "projection_mix" in given:
        check_mix(given["projection_mix"])
    if "prototype_pull" in given:
        check_pull(given["prototype_pull"])


def _voting_settings(
    embeddings: np.ndarray,
    labels,
    given: dict[str, Any],
    tune: bool,
    seed: int,
) -> dict[str, Any]:
    """Voting defaults to save: the given ones, tuned ones, or the library's."""
    _check_voting_settings(given)
    # numpy numbers (np.float32(0.5)) pass the checks but not json.dumps.
    given = {
        name: value.item() if isinstance(value, np.generic) else value
        for name, value in given.items()
    }
    settings = {
        "k": voting.DEFAULT_K,
        "weighting": voting.DEFAULT_WEIGHTING,
        "temperature": voting.DEFAULT_TEMPERATURE,
        "popularity_correction": 0.0,
        "ridge": voting.DEFAULT_RIDGE,
        "projection_mix": 1.0,
        "prototype_pull": 0.0,
        "diversity": voting.DEFAULT_DIVERSITY,
        "threshold": None,
        "tuned": False,
    }
    if tune and len(embeddings) >= MIN_PHOTOS_TO_TUNE:
        # Settings the caller fixed are searched at that one value only.
        grid = {}
        if "k" in given:
            grid["k"] = (given["k"],)
        if "weighting" in given or "temperature" in given or "ridge" in given:
            grid["weighting"] = _weighting_choices(given)
        if "popularity_correction" in given:
            grid["popularity_correction"] = (given["popularity_correction"],)
        if "projection_mix" in given:
            grid["projection_mix"] = (given["projection_mix"],)
        if "prototype_pull" in given:
            grid["prototype_pull"] = (given["prototype_pull"],)
        if "diversity" in given:
            grid["diversity"] = (given["diversity"],)
        result = tune_voting(embeddings, labels, seed=seed, grid=grid)
        settings.update(result.parameters.as_settings())
        settings["threshold"] = result.threshold
        settings["tuned"] = True
        settings["cross_validation"] = result.chosen
    elif tune:
        logger.info(
            "only %d photos indexed: keeping the default voting settings "
            "(tuning needs %d)",
            len(embeddings),
            MIN_PHOTOS_TO_TUNE,
        )
    settings.update(given)
    return settings


def _warn_unused_parameters(given: dict[str, Any]) -> None:
    """Say so when a temperature or ridge is given for a weighting without one."""
    weighting = given.get("weighting")
    for name, owner in (("temperature", "softmax"), ("ridge", "reconstruction")):
        if name in given and weighting is not None and weighting != owner:
            logger.warning(
                "%s=%s is ignored: only the %s weighting uses it, not %s",
                name,
                given[name],
                owner,
                weighting,
            )


def _weighting_choices(given: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The weightings to search when the caller fixed a weighting or a parameter.

    A fixed weighting is searched alone, over the default grid's values of its
    parameter unless that was given too; a temperature or ridge given alone
    replaces that parameter's values and the other weightings are still
    searched."""
    weighting = given.get("weighting")
    fixed = {
        owner: given[name]
        for name, owner in (("temperature", "softmax"), ("ridge", "reconstruction"))
        if name in given and weighting in (None, owner)
    }
    choices = [
        (name, fixed.get(name, parameter))
        for name, parameter in DEFAULT_GRID["weighting"]
        if weighting is None or name == weighting
    ]
    return tuple(dict.fromkeys(choices))


def _log_skipped(report: BuildReport, index_dir: Path) -> None:
    """One warning listing the skipped photos and their reasons (the first 20)."""
    if not report.skipped:
        return
    shown = list(report.skipped.items())[:SKIPPED_PHOTOS_LOGGED]
    lines = [f"  {path}: {reason}" for path, reason in shown]
    if len(report.skipped) > len(shown):
        lines.append(f"  ... and {len(report.skipped) - len(shown)} more")
    logger.warning(
        "%d of %d photos skipped; each is listed with its reason in %s:\n%s",
        report.photos_skipped,
        report.photos_listed,
        index_dir / REPORT_FILE,
        "\n".join(lines),
    )


def _write_report(index_dir: Path, report: BuildReport, started: float) -> None:
    report.seconds_total = round(time.perf_counter() - started, 3)
    write_atomically(index_dir / REPORT_FILE, report.to_json().encode("utf-8"))
