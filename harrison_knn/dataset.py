"""A tagged photo collection in HARRISON layout, and splits of it.

A collection is a folder holding three text files, all UTF-8:

- ``data_list.txt``: one photo path per line, relative to the folder;
- ``tag_list.txt``: the hashtags of the photo on the same line, separated by
  spaces;
- ``vocab_index.txt``: ``hashtag id`` per line, ids running from 0 without gaps.

Reading checks the three files against each other and refuses anything that
would silently pair a photo with the wrong hashtags; what is tolerated and what
is refused is listed in ``docs/robustness.md``. The photos themselves are never
opened here: a collection can be read while its photos are elsewhere or absent.
"""

from __future__ import annotations

import difflib
import logging
import math
import numbers
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import scipy.sparse
from sklearn.model_selection import KFold, ShuffleSplit

__all__ = [
    "DATA_LIST",
    "TAG_LIST",
    "VOCAB_INDEX",
    "AnnotationError",
    "Collection",
    "fold_indices",
    "read_collection",
    "split_indices",
]

logger = logging.getLogger(__name__)

DATA_LIST = "data_list.txt"
TAG_LIST = "tag_list.txt"
VOCAB_INDEX = "vocab_index.txt"

_LAYOUT = (
    f"a collection folder holds {DATA_LIST} (one photo path per line), "
    f"{TAG_LIST} (the hashtags of the photo on the same line, separated by "
    f"spaces) and {VOCAB_INDEX} ('hashtag id' per line)"
)
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class AnnotationError(ValueError):
    """An annotation file of a collection is malformed.

    Attributes:
        path: the file at fault.
        line: the 1-based line number at fault, or ``None`` when the fault is
            the file as a whole (an empty file, a gap in the vocabulary ids).
        problem: what is wrong and what to do instead.
    """

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = str(self.path) if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Collection:
    """Photos of one folder with their hashtags, as read from its annotations.

    Attributes:
        root: the data folder; photo paths are relative to it.
        paths: photo paths as written in ``data_list.txt``, surrounding
            whitespace removed.
        tags: hashtags of each photo in file order, each hashtag once.
        vocabulary: hashtag names in the id order of ``vocab_index.txt``, so
            ``vocabulary[i]`` is the hashtag with id ``i``.
    """

    root: Path
    paths: list[str]
    tags: list[list[str]]
    vocabulary: list[str]

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.tags):
            raise ValueError(
                f"a Collection needs one tag list per photo, got {len(self.paths)} "
                f"paths and {len(self.tags)} tag lists"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def label_matrix(self) -> scipy.sparse.csr_matrix:
        """Return which photo carries which hashtag.

        Returns:
            ``(n_photos, n_tags)`` float32 CSR matrix of 0 and 1, columns in
            vocabulary id order, column indices sorted within each row. A new
            matrix on every call, so callers may modify it.

        Raises:
            ValueError: a photo carries a hashtag that is not in the
                vocabulary (only possible for a hand-built Collection).
        """
        column_of = {tag: column for column, tag in enumerate(self.vocabulary)}
        row_lengths = np.fromiter(
            (len(photo_tags) for photo_tags in self.tags),
            dtype=np.int64,
            count=len(self.tags),
        )
        indptr = np.zeros(len(self.tags) + 1, dtype=np.int64)
        np.cumsum(row_lengths, out=indptr[1:])

        try:
            indices = np.fromiter(
                (column_of[tag] for photo_tags in self.tags for tag in photo_tags),
                dtype=np.int64,
                count=int(indptr[-1]),
            )
        except KeyError as error:
            row = next(i for i, t in enumerate(self.tags) if error.args[0] in t)
            raise ValueError(
                f"photo {row} ({self.paths[row]!r}) carries hashtag "
                f"{error.args[0]!r}, which is not in the vocabulary"
            ) from None

        matrix = scipy.sparse.csr_matrix(
            (np.ones(len(indices), dtype=np.float32), indices, indptr),
            shape=(len(self.tags), len(self.vocabulary)),
        )
        # A hand-built Collection may repeat a hashtag on a photo; labels stay 0/1.
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    def photo_path(self, i: int) -> Path:
        """Return the file of photo ``i``: ``root / paths[i]``.

        Raises:
            ValueError: the path leaves ``root`` (only possible for a
                hand-built Collection; ``read_collection`` refuses such paths).
        """
        path = self.paths[i]
        problem = _path_problem(path)
        if problem is not None:
            raise ValueError(f"photo {i} ({path!r}): {problem}")
        return self.root / path

    def tag_counts(self) -> np.ndarray:
        """Return how many photos carry each hashtag.

        Returns:
            ``(n_tags,)`` int64, in vocabulary id order.
        """
        indices = self.label_matrix().indices
        return np.bincount(indices, minlength=len(self.vocabulary)).astype(np.int64)

    def subset(self, ids: np.ndarray | list[int]) -> Collection:
        """Return the photos at ``ids``, in that order, with the same vocabulary.

        Args:
            ids: ``(m,)`` integer array of photo positions in ``[0, len(self))``;
                a position may repeat (for a bootstrap sample).

        Raises:
            TypeError: ``ids`` is not a 1-D integer array (a boolean mask is
                refused: pass ``np.flatnonzero(mask)``).
            IndexError: a position is negative or not below ``len(self)``.
        """
        ids = np.asarray(ids)
        if ids.size == 0:
            ids = ids.astype(np.int64)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(
                f"subset needs a 1-D integer array of photo positions, got shape "
                f"{ids.shape} dtype {ids.dtype}; for a boolean mask pass "
                f"np.flatnonzero(mask)"
            )
        outside = (ids < 0) | (ids >= len(self))
        if outside.any():
            raise IndexError(
                f"photo position {int(ids[outside][0])} is outside the collection "
                f"of {len(self)} photos (valid: 0 to {len(self) - 1})"
            )

        return Collection(
            root=self.root,
            paths=[self.paths[i] for i in ids.tolist()],
            tags=[list(self.tags[i]) for i in ids.tolist()],
            vocabulary=list(self.vocabulary),
        )


def read_collection(root: str | Path) -> Collection:
    """Read the annotations of a collection folder in HARRISON layout.

    The photos are not opened and need not exist.

    Args:
        root: the folder holding ``data_list.txt``, ``tag_list.txt`` and
            ``vocab_index.txt``.

    Returns:
        The collection, vocabulary in id order.

    Raises:
        FileNotFoundError: ``root`` or one of the three files does not exist,
            ``root`` is a file, or one of the three files is a folder.
        AnnotationError: a file is malformed; the message names the file and
            the line.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"collection folder {root} does not exist; {_LAYOUT}")
    if not root.is_dir():
        # FileNotFoundError rather than NotADirectoryError: the project reports
        # user mistakes as ValueError or FileNotFoundError, and no folder is
        # found where one is expected.
        raise FileNotFoundError(
            f"collection folder {root} is a file, not a folder; {_LAYOUT}"
        )

    vocabulary = _parse_vocabulary(root / VOCAB_INDEX)
    paths = _parse_paths(root / DATA_LIST)
    tags = _parse_tags(root / TAG_LIST, vocabulary)
    if len(paths) != len(tags):
        _refuse_length_mismatch(root, len(paths), len(tags))

    logger.info(
        "read %d photos and %d hashtags from %s", len(paths), len(vocabulary), root
    )
    return Collection(root=root, paths=paths, tags=tags, vocabulary=vocabulary)


def split_indices(
    n: int, test_size: int | float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split photo positions ``0 .. n-1`` at random into train and test.

    Args:
        n: number of photos, at least 2.
        test_size: an int is the number of test photos (the HARRISON paper
            holds out 5,000); a float in ``(0, 1)`` is the test fraction,
            rounded up to whole photos. Both parts must end up non-empty.
        seed: the same ``n``, ``test_size`` and ``seed`` give the same split.

    Returns:
        ``(train_ids, test_ids)``: sorted ``(n - t,)`` and ``(t,)`` int64
        arrays, disjoint, together ``0 .. n-1``.

    Raises:
        ValueError: ``n`` or ``test_size`` is out of range.
        TypeError: an argument has the wrong type.
    """
    n = _check_whole_number(n, "n", minimum=2)
    seed = _check_whole_number(seed, "seed", minimum=0)
    test_count = _test_count(n, test_size)

    splitter = ShuffleSplit(n_splits=1, test_size=test_count, random_state=seed)
    train_ids, test_ids = next(splitter.split(np.zeros((n, 1), dtype=np.int8)))
    return np.sort(train_ids).astype(np.int64), np.sort(test_ids).astype(np.int64)


def fold_indices(
    n: int, folds: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split photo positions ``0 .. n-1`` into ``folds`` shuffled folds.

    Every position is in the test part of exactly one fold; fold sizes differ
    by at most one.

    Args:
        n: number of photos, at least ``folds``.
        folds: number of folds, at least 2.
        seed: the same arguments give the same folds.

    Returns:
        ``folds`` pairs ``(train_ids, test_ids)`` of sorted int64 arrays.

    Raises:
        ValueError: ``folds`` is below 2 or above ``n``.
        TypeError: an argument is not a whole number.
    """
    n = _check_whole_number(n, "n", minimum=2)
    folds = _check_whole_number(folds, "folds", minimum=2)
    seed = _check_whole_number(seed, "seed", minimum=0)
    if folds > n:
        raise ValueError(
            f"folds={folds} is more than the {n} photos; use at most {n} folds"
        )

    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        (np.sort(train_ids).astype(np.int64), np.sort(test_ids).astype(np.int64))
        for train_ids, test_ids in splitter.split(np.zeros((n, 1), dtype=np.int8))
    ]


def _read_lines(path: Path) -> list[str]:
    """Return the lines of an annotation file, trailing blank lines removed.

    Windows line endings, a UTF-8 byte-order mark and a missing final newline
    are tolerated; a carriage return on its own is refused, since it would
    merge lines. Lines keep their other whitespace; the callers strip it.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; {_LAYOUT}")
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not a file; {_LAYOUT}")
    data = path.read_bytes()

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        bad = data[error.start : error.end]
        raise AnnotationError(
            path,
            line,
            f"bytes {bad!r} are not UTF-8; save the file as UTF-8",
        ) from None
    text = text.removeprefix("\ufeff")
    if text.count("\r") != text.count("\r\n"):
        lone = re.search(r"\r(?!\n)", text)
        raise AnnotationError(
            path,
            text.count("\n", 0, lone.start()) + 1,
            "the line holds a carriage return without a newline (old Mac line "
            "ends?); save the file with \\n or \\r\\n line ends",
        )

    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise AnnotationError(path, None, f"the file is empty; {_LAYOUT}")
    return lines


def _refuse_blank_line(path: Path, line: int, why: str) -> NoReturn:
    raise AnnotationError(
        path,
        line,
        f"the line is blank; {why}. Remove it, or for a blank line at the end of "
        f"the file, nothing needs doing (those are ignored)",
    )


def _parse_vocabulary(path: Path) -> list[str]:
    """Return hashtag names in id order from ``vocab_index.txt``."""
    lines = _read_lines(path)
    line_of_id: dict[int, int] = {}
    line_of_tag: dict[str, int] = {}
    tag_of_id: dict[int, str] = {}

    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            _refuse_blank_line(path, number, "every line names one hashtag")
        if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
            raise AnnotationError(
                path,
                number,
                f"expected 'hashtag id' (a hashtag, spaces, a whole number "
                f"from 0), got {line.strip()!r}",
            )
        tag, tag_id = fields[0], int(fields[1])
        if tag_id in line_of_id:
            raise AnnotationError(
                path,
                number,
                f"id {tag_id} is already used on line {line_of_id[tag_id]}; "
                f"give every hashtag its own id",
            )
        if tag in line_of_tag:
            raise AnnotationError(
                path,
                number,
                f"hashtag {tag!r} is already listed on line {line_of_tag[tag]}; "
                f"list every hashtag once",
            )
        line_of_id[tag_id] = number
        line_of_tag[tag] = number
        tag_of_id[tag_id] = tag

    largest = max(line_of_id)
    if largest >= len(line_of_id):
        missing = next(i for i in range(len(line_of_id)) if i not in line_of_id)
        raise AnnotationError(
            path,
            line_of_id[largest],
            f"ids must run from 0 to {len(line_of_id) - 1} without gaps, but id "
            f"{missing} is missing and this line uses id {largest}; renumber "
            f"the hashtags",
        )
    return [tag_of_id[i] for i in range(len(tag_of_id))]


def _path_problem(path: str) -> str | None:
    """Say why a photo path from ``data_list.txt`` is unsafe, or return None."""
    if _CONTROL_CHARACTER.search(path):
        return "the path contains a control character; remove it"
    if "\\" in path:
        return "the path contains a backslash; separate folders with '/'"
    if path.startswith("/") or _WINDOWS_DRIVE.match(path):
        return "the path is absolute; write it relative to the collection folder"
    normal = posixpath.normpath(path)
    if normal == ".":
        return "the path names the collection folder itself, not a photo"
    if normal == ".." or normal.startswith("../"):
        return (
            "the path leaves the collection folder through '..'; photos must "
            "lie inside it"
        )
    return None


def _parse_paths(path: Path) -> list[str]:
    """Return the photo paths of ``data_list.txt``, checked to stay inside."""
    lines = _read_lines(path)
    paths: list[str] = []
    line_of_path: dict[str, int] = {}

    for number, line in enumerate(lines, start=1):
        photo = line.strip()
        if not photo:
            _refuse_blank_line(
                path,
                number,
                f"line i of {DATA_LIST} and {TAG_LIST} describe the same photo, "
                f"so a blank line would shift every photo after it",
            )
        problem = _path_problem(photo)
        if problem is not None:
            raise AnnotationError(path, number, f"{photo!r}: {problem}")
        normal = posixpath.normpath(photo)
        if normal in line_of_path:
            raise AnnotationError(
                path,
                number,
                f"photo {photo!r} is already listed on line "
                f"{line_of_path[normal]}; list every photo once",
            )
        line_of_path[normal] = number
        paths.append(photo)
    return paths


def _parse_tags(path: Path, vocabulary: list[str]) -> list[list[str]]:
    """Return the hashtags of each line of ``tag_list.txt``, each one once."""
    lines = _read_lines(path)
    known = set(vocabulary)
    tags: list[list[str]] = []
    repeating_lines: list[int] = []

    for number, line in enumerate(lines, start=1):
        photo_tags = line.split()
        if not photo_tags:
            _refuse_blank_line(
                path,
                number,
                "every photo needs at least one hashtag (HARRISON photos have 1 "
                "to 10), and the lines pair with data_list.txt by position",
            )
        if not known.issuperset(photo_tags):
            unknown = next(tag for tag in photo_tags if tag not in known)
            raise AnnotationError(
                path,
                number,
                f"hashtag {unknown!r} is not in {VOCAB_INDEX}"
                f"{_suggestion(unknown, vocabulary)}; add it there or remove it "
                f"from this line",
            )
        if len(set(photo_tags)) != len(photo_tags):
            repeating_lines.append(number)
            photo_tags = list(dict.fromkeys(photo_tags))
        tags.append(photo_tags)

    if repeating_lines:
        logger.warning(
            "%s: %d lines repeat a hashtag (first: line %d); each is kept once",
            path,
            len(repeating_lines),
            repeating_lines[0],
        )
    return tags


def _suggestion(tag: str, vocabulary: list[str]) -> str:
    """Return ' (did you mean ...?)' for a near miss, or an empty string."""
    close = difflib.get_close_matches(tag.lower().lstrip("#"), vocabulary, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _refuse_length_mismatch(root: Path, photo_count: int, tag_count: int) -> NoReturn:
    longer, shorter = (DATA_LIST, TAG_LIST)
    if tag_count > photo_count:
        longer, shorter = shorter, longer
    raise AnnotationError(
        root / longer,
        min(photo_count, tag_count) + 1,
        f"{DATA_LIST} has {photo_count} photo lines but {TAG_LIST} has "
        f"{tag_count} hashtag lines, so this line has no partner in {shorter}; "
        f"line i of both files must describe the same photo",
    )


def _check_whole_number(value: object, name: str, *, minimum: int) -> int:
    """Return ``value`` as an int, refusing booleans, floats and small values."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _test_count(n: int, test_size: object) -> int:
    """Turn ``test_size`` (a count or a fraction) into a number of test photos."""
    if isinstance(test_size, numbers.Integral) and not isinstance(test_size, bool):
        count = int(test_size)
        if not 1 <= count <= n - 1:
            raise ValueError(
                f"test_size={count} photos must leave both parts non-empty for "
                f"n={n}: use 1 to {n - 1}, or a fraction in (0, 1)"
            )
        return count
    if isinstance(test_size, numbers.Real) and not isinstance(test_size, bool):
        fraction = float(test_size)
        if not 0.0 < fraction < 1.0:
            raise ValueError(
                f"test_size={fraction} as a fraction must lie strictly between 0 "
                f"and 1; for a number of photos pass an int"
            )
        count = math.ceil(fraction * n)
        if count >= n:
            raise ValueError(
                f"test_size={fraction} of n={n} photos rounds up to {count} test "
                f"photos, leaving none to train on; use a smaller fraction"
            )
        return count
    raise TypeError(
        f"test_size must be an int (photos) or a float (fraction), got {test_size!r}"
    )
