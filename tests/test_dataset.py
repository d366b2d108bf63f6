"""Tests of harrison_knn.dataset: reading annotation files, and splits."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harrison_knn.dataset import (
    AnnotationError,
    Collection,
    fold_indices,
    read_collection,
    split_indices,
)

# The shared data folder beside the project, or $HARRISON_KNN_DATA; tests that need
# it fail when it is absent, since the real files are part of what they check.
DATA = Path(
    os.environ.get(
        "HARRISON_KNN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)
HARRISON = DATA / "harrison"
FLICKR = DATA / "flickr8k-1k"

VOCAB = "love 0\nsea 1\nsun 2\n"
DATA = "a/1.jpg\na/2.jpg\nb/3.jpg\n"
TAGS = "sea love\nsun\nlove sun sea\n"


def write_collection(
    folder: Path,
    data: str | bytes = DATA,
    tags: str | bytes = TAGS,
    vocab: str | bytes = VOCAB,
) -> Path:
    """Write the three annotation files byte for byte into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (
        ("data_list.txt", data),
        ("tag_list.txt", tags),
        ("vocab_index.txt", vocab),
    ):
        raw = content.encode("utf-8") if isinstance(content, str) else content
        (folder / name).write_bytes(raw)
    return folder


def refusal(folder: Path) -> AnnotationError:
    with pytest.raises(AnnotationError) as caught:
        read_collection(folder)
    return caught.value


# Reading: the plain case and the tolerated variations.


def test_read_collection_reads_paths_tags_and_vocabulary(tmp_path):
    collection = read_collection(write_collection(tmp_path))

    assert collection.root == tmp_path
    assert len(collection) == 3
    assert collection.paths == ["a/1.jpg", "a/2.jpg", "b/3.jpg"]
    assert collection.tags == [["sea", "love"], ["sun"], ["love", "sun", "sea"]]
    assert collection.vocabulary == ["love", "sea", "sun"]


def test_read_collection_accepts_a_string_root(tmp_path):
    collection = read_collection(str(write_collection(tmp_path)))

    assert collection.root == tmp_path
    assert len(collection) == 3


def test_windows_line_endings_are_tolerated(tmp_path):
    folder = write_collection(
        tmp_path,
        data=DATA.replace("\n", "\r\n"),
        tags=TAGS.replace("\n", "\r\n"),
        vocab=VOCAB.replace("\n", "\r\n"),
    )

    collection = read_collection(folder)

    assert collection.paths == ["a/1.jpg", "a/2.jpg", "b/3.jpg"]
    assert collection.tags == [["sea", "love"], ["sun"], ["love", "sun", "sea"]]
    assert collection.vocabulary == ["love", "sea", "sun"]


def test_trailing_spaces_and_tabs_are_tolerated(tmp_path):
    folder = write_collection(
        tmp_path,
        data="a/1.jpg \t\na/2.jpg\t\nb/3.jpg  \n",
        tags="sea love \nsun\t\nlove sun sea \t \n",
        vocab="love 0 \nsea\t1\t\nsun   2  \n",
    )

    collection = read_collection(folder)

    assert collection.paths == ["a/1.jpg", "a/2.jpg", "b/3.jpg"]
    assert collection.tags == [["sea", "love"], ["sun"], ["love", "sun", "sea"]]
    assert collection.vocabulary == ["love", "sea", "sun"]


def test_several_spaces_or_tabs_between_hashtags_are_tolerated(tmp_path):
    folder = write_collection(tmp_path, tags="sea    love\nsun\nlove\t\tsun \t sea\n")

    collection = read_collection(folder)

    assert collection.tags == [["sea", "love"], ["sun"], ["love", "sun", "sea"]]


def test_missing_final_newline_is_tolerated(tmp_path):
    folder = write_collection(
        tmp_path,
        data=DATA.rstrip("\n"),
        tags="love\nlove\nlove",
        vocab="love 0",
    )

    collection = read_collection(folder)

    assert collection.paths == ["a/1.jpg", "a/2.jpg", "b/3.jpg"]
    assert collection.tags == [["love"], ["love"], ["love"]]
    assert collection.vocabulary == ["love"]


def test_hashtag_repeated_on_a_line_is_kept_once(tmp_path, caplog):
    folder = write_collection(tmp_path, tags="sea love sea\nsun sun\nlove\n")

    with caplog.at_level(logging.WARNING, logger="harrison_knn.dataset"):
        collection = read_collection(folder)

    assert collection.tags == [["sea", "love"], ["sun"], ["love"]]
    assert collection.label_matrix().sum() == 4.0
    assert "2 lines repeat a hashtag (first: line 1)" in caplog.text


def test_blank_lines_at_the_end_are_ignored(tmp_path):
    folder = write_collection(
        tmp_path,
        data=DATA + "\n\n",
        tags=TAGS + "  \r\n\t\n",
        vocab=VOCAB + "\n \n\n",
    )

    collection = read_collection(folder)

    assert len(collection) == 3
    assert collection.tags[-1] == ["love", "sun", "sea"]
    assert collection.vocabulary == ["love", "sea", "sun"]


def test_utf8_byte_order_mark_is_ignored(tmp_path):
    bom = "\ufeff"
    folder = write_collection(
        tmp_path, data=bom + DATA, tags=bom + TAGS, vocab=bom + VOCAB
    )

    collection = read_collection(folder)

    assert collection.paths[0] == "a/1.jpg"
    assert collection.tags[0] == ["sea", "love"]
    assert collection.vocabulary[0] == "love"


def test_vocabulary_is_kept_in_id_order_whatever_the_line_order(tmp_path):
    folder = write_collection(tmp_path, vocab="sun 2\nlove 0\nsea 1\n")

    collection = read_collection(folder)

    assert collection.vocabulary == ["love", "sea", "sun"]
    assert collection.label_matrix().toarray()[1].tolist() == [0.0, 0.0, 1.0]


def test_non_ascii_hashtags_and_paths_are_read(tmp_path):
    folder = write_collection(
        tmp_path,
        data="café/été.jpg\n東京/1.jpg\n",
        tags="café 東京\n東京\n",
        vocab="東京 1\ncafé 0\n",
    )

    collection = read_collection(folder)

    assert collection.paths == ["café/été.jpg", "東京/1.jpg"]
    assert collection.tags == [["café", "東京"], ["東京"]]
    assert collection.vocabulary == ["café", "東京"]


def test_reading_does_not_need_the_photos_to_exist(tmp_path):
    collection = read_collection(write_collection(tmp_path))

    assert not collection.photo_path(0).exists()
    assert collection.photo_path(0) == tmp_path / "a" / "1.jpg"


def test_photo_with_more_than_ten_hashtags_is_accepted(tmp_path):
    vocab = "".join(f"tag{i} {i}\n" for i in range(12))
    line = " ".join(f"tag{i}" for i in range(12))
    folder = write_collection(tmp_path, data="a.jpg\n", tags=line + "\n", vocab=vocab)

    collection = read_collection(folder)

    assert len(collection.tags[0]) == 12
    assert collection.label_matrix().sum() == 12.0


def test_path_through_dotdot_that_stays_inside_is_kept_as_written(tmp_path):
    folder = write_collection(tmp_path, data="a/../b/1.jpg\na/2.jpg\n./b/3.jpg\n")

    collection = read_collection(folder)

    assert collection.paths == ["a/../b/1.jpg", "a/2.jpg", "./b/3.jpg"]


# Reading: the refused cases, each naming file and line.


def test_blank_line_in_the_middle_of_data_list_is_refused(tmp_path):
    folder = write_collection(tmp_path, data="a/1.jpg\n\na/2.jpg\nb/3.jpg\n")

    error = refusal(folder)

    assert error.path == folder / "data_list.txt"
    assert error.line == 2
    assert str(error).startswith(f"{folder / 'data_list.txt'}, line 2: the line is")
    assert "a blank line would shift every photo after it" in str(error)


def test_blank_line_in_the_middle_of_tag_list_is_refused(tmp_path):
    folder = write_collection(tmp_path, tags="sea love\n \t\nlove sun sea\n")

    error = refusal(folder)

    assert error.path == folder / "tag_list.txt"
    assert error.line == 2
    assert "every photo needs at least one hashtag" in str(error)


def test_blank_line_in_the_middle_of_vocab_index_is_refused(tmp_path):
    folder = write_collection(tmp_path, vocab="love 0\n\nsea 1\nsun 2\n")

    error = refusal(folder)

    assert str(error).startswith(f"{folder / 'vocab_index.txt'}, line 2: the line")
    assert "every line names one hashtag" in str(error)


def test_leading_blank_line_is_refused_as_a_blank_line_in_the_middle(tmp_path):
    folder = write_collection(tmp_path, data="\n" + DATA)

    error = refusal(folder)

    assert (error.path.name, error.line) == ("data_list.txt", 1)


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("vocab_index.txt", "love 0\rsea 1\rsun 2\r", 1),
        ("data_list.txt", "a/1.jpg\r\na/2.jpg\rb/3.jpg\r\n", 2),
    ],
)
def test_carriage_return_without_newline_is_refused(tmp_path, name, content, line):
    folder = write_collection(tmp_path)
    (folder / name).write_bytes(content.encode())

    error = refusal(folder)

    assert (error.path, error.line) == (folder / name, line)
    assert "carriage return without a newline (old Mac line ends?)" in str(error)


def test_more_photos_than_tag_lines_is_refused_with_both_counts(tmp_path):
    folder = write_collection(tmp_path, data=DATA + "c/4.jpg\n")

    error = refusal(folder)

    assert error.path == folder / "data_list.txt"
    assert error.line == 4
    assert "data_list.txt has 4 photo lines but tag_list.txt has 3" in str(error)
    assert "no partner in tag_list.txt" in str(error)


def test_more_tag_lines_than_photos_is_refused_with_both_counts(tmp_path):
    folder = write_collection(tmp_path, data="a/1.jpg\n")

    error = refusal(folder)

    assert error.path == folder / "tag_list.txt"
    assert error.line == 2
    assert "data_list.txt has 1 photo lines but tag_list.txt has 3" in str(error)


def test_hashtag_missing_from_the_vocabulary_is_refused_by_name(tmp_path):
    folder = write_collection(tmp_path, tags="sea love\nsun\nlove Sunset\n")

    error = refusal(folder)

    assert str(error) == (
        f"{folder / 'tag_list.txt'}, line 3: hashtag 'Sunset' is not in "
        f"vocab_index.txt (did you mean 'sun'?); add it there or remove it "
        f"from this line"
    )


def test_hashtag_with_a_hash_sign_is_refused_with_a_suggestion(tmp_path):
    folder = write_collection(tmp_path, tags="#love\nsun\nsea\n")

    error = refusal(folder)

    assert error.line == 1
    assert "hashtag '#love' is not in vocab_index.txt (did you mean 'love'?)" in str(
        error
    )


def test_duplicate_photo_path_is_refused_naming_both_lines(tmp_path):
    folder = write_collection(tmp_path, data="a/1.jpg\na/2.jpg\na/1.jpg\n")

    error = refusal(folder)

    assert str(error) == (
        f"{folder / 'data_list.txt'}, line 3: photo 'a/1.jpg' is already listed "
        f"on line 1; list every photo once"
    )


def test_same_photo_written_two_ways_is_refused_as_duplicate(tmp_path):
    folder = write_collection(tmp_path, data="a/1.jpg\na/2.jpg\n./a//1.jpg\n")

    error = refusal(folder)

    assert error.line == 3
    assert "already listed on line 1" in str(error)


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("data_list.txt", b"a/1.jpg\na/\xff2.jpg\nb/3.jpg\n", 2),
        ("tag_list.txt", b"sea love\nsun\nlove \xe9t\xe9\n", 3),
        ("vocab_index.txt", b"love 0\r\nsea 1\r\nsun 2\r\n\xc3 3\r\n", 4),
    ],
)
def test_bytes_that_are_not_utf8_are_refused_naming_file_and_line(
    tmp_path, name, content, line
):
    folder = write_collection(tmp_path)
    (folder / name).write_bytes(content)

    error = refusal(folder)

    assert error.path == folder / name
    assert error.line == line
    assert "are not UTF-8; save the file as UTF-8" in str(error)


def test_duplicate_vocabulary_id_is_refused_naming_both_lines(tmp_path):
    folder = write_collection(tmp_path, vocab="love 0\nsea 1\nsun 1\n")

    error = refusal(folder)

    assert str(error) == (
        f"{folder / 'vocab_index.txt'}, line 3: id 1 is already used on line 2; "
        f"give every hashtag its own id"
    )


def test_gap_in_vocabulary_ids_is_refused_naming_the_missing_id(tmp_path):
    folder = write_collection(tmp_path, vocab="love 0\nsea 1\nsun 3\n")

    error = refusal(folder)

    assert error.line == 3
    assert (
        "ids must run from 0 to 2 without gaps, but id 2 is missing and this "
        "line uses id 3" in str(error)
    )


def test_vocabulary_not_starting_at_zero_is_refused(tmp_path):
    folder = write_collection(tmp_path, vocab="love 1\nsea 2\nsun 3\n")

    error = refusal(folder)

    assert error.line == 3
    assert "id 0 is missing" in str(error)


@pytest.mark.parametrize(
    "bad_line",
    ["sun", "sun 2 extra", "sun two", "sun -2", "sun 2.0", "2 sun", "sun ²"],
)
def test_malformed_vocabulary_line_is_refused(tmp_path, bad_line):
    folder = write_collection(tmp_path, vocab=f"love 0\nsea 1\n{bad_line}\n")

    error = refusal(folder)

    assert str(error) == (
        f"{folder / 'vocab_index.txt'}, line 3: expected 'hashtag id' (a "
        f"hashtag, spaces, a whole number from 0), got {bad_line!r}"
    )


def test_duplicate_hashtag_name_in_vocabulary_is_refused(tmp_path):
    folder = write_collection(tmp_path, vocab="love 0\nsea 1\nlove 2\n")

    error = refusal(folder)

    assert str(error) == (
        f"{folder / 'vocab_index.txt'}, line 3: hashtag 'love' is already listed "
        f"on line 1; list every hashtag once"
    )


@pytest.mark.parametrize("name", ["data_list.txt", "tag_list.txt", "vocab_index.txt"])
@pytest.mark.parametrize("content", [b"", b"\n\n", b" \r\n\t\r\n"])
def test_empty_file_is_refused(tmp_path, name, content):
    folder = write_collection(tmp_path)
    (folder / name).write_bytes(content)

    error = refusal(folder)

    assert error.path == folder / name
    assert error.line is None
    assert str(error).startswith(f"{folder / name}: the file is empty;")


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("../../etc/passwd", "leaves the collection folder through '..'"),
        ("..", "leaves the collection folder through '..'"),
        ("a/../../outside.jpg", "leaves the collection folder through '..'"),
        ("/etc/passwd", "the path is absolute"),
        ("C:/photos/1.jpg", "the path is absolute"),
        ("a\\1.jpg", "the path contains a backslash"),
        ("..\\..\\etc\\passwd", "the path contains a backslash"),
        (".", "names the collection folder itself"),
        ("a/\x001.jpg", "the path contains a control character"),
    ],
)
def test_photo_path_leaving_the_data_folder_is_refused(tmp_path, path, problem):
    folder = write_collection(tmp_path, data=f"a/1.jpg\n{path}\nb/3.jpg\n")

    error = refusal(folder)

    assert error.path == folder / "data_list.txt"
    assert error.line == 2
    assert problem in str(error)


@pytest.mark.parametrize("name", ["data_list.txt", "tag_list.txt", "vocab_index.txt"])
def test_missing_annotation_file_names_the_path_and_the_layout(tmp_path, name):
    folder = write_collection(tmp_path)
    (folder / name).unlink()

    with pytest.raises(FileNotFoundError) as caught:
        read_collection(folder)

    assert str(caught.value).startswith(f"{folder / name} does not exist;")
    assert "a collection folder holds data_list.txt (one photo path" in str(
        caught.value
    )


def test_missing_root_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"collection folder .*nowhere does"):
        read_collection(tmp_path / "nowhere")


def test_root_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "data_list.txt"
    file.write_text(DATA)

    with pytest.raises(FileNotFoundError) as caught:
        read_collection(file)

    assert str(caught.value).startswith(
        f"collection folder {file} is a file, not a folder;"
    )


def test_annotation_file_that_is_a_folder_is_refused(tmp_path):
    folder = write_collection(tmp_path)
    (folder / "tag_list.txt").unlink()
    (folder / "tag_list.txt").mkdir()

    with pytest.raises(
        FileNotFoundError, match=re.escape("tag_list.txt is a folder, not a")
    ):
        read_collection(folder)


# The Collection object.


def test_label_matrix_is_float32_zero_one_in_vocabulary_order(tmp_path):
    collection = read_collection(write_collection(tmp_path))

    matrix = collection.label_matrix()

    assert isinstance(matrix, scipy.sparse.csr_matrix)
    assert matrix.shape == (3, 3)
    assert matrix.dtype == np.float32
    assert matrix.has_sorted_indices
    assert matrix.toarray().tolist() == [
        [1.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [1.0, 1.0, 1.0],
    ]


def test_label_matrix_of_a_hand_built_collection_stays_zero_one():
    collection = Collection(
        root=Path("."), paths=["x.jpg"], tags=[["b", "a", "b"]], vocabulary=["a", "b"]
    )

    assert collection.label_matrix().toarray().tolist() == [[1.0, 1.0]]


def test_label_matrix_refuses_a_hashtag_outside_the_vocabulary():
    collection = Collection(
        root=Path("."), paths=["x.jpg"], tags=[["a", "zebra"]], vocabulary=["a"]
    )

    with pytest.raises(
        ValueError, match=re.escape("photo 0 ('x.jpg') carries hashtag")
    ):
        collection.label_matrix()


def test_collection_refuses_paths_and_tags_of_different_lengths():
    with pytest.raises(ValueError, match="got 2 paths and 1 tag lists"):
        Collection(
            root=Path("."), paths=["x.jpg", "y.jpg"], tags=[["a"]], vocabulary=["a"]
        )


def test_tag_counts_counts_photos_per_hashtag(tmp_path):
    collection = read_collection(write_collection(tmp_path))

    counts = collection.tag_counts()

    assert counts.dtype == np.int64
    assert counts.tolist() == [2, 2, 2]


def test_tag_counts_include_unused_hashtags_as_zero(tmp_path):
    folder = write_collection(tmp_path, vocab=VOCAB + "rain 3\n")

    counts = read_collection(folder).tag_counts()

    assert counts.tolist() == [2, 2, 2, 0]


def test_photo_path_joins_root_and_path(tmp_path):
    collection = read_collection(write_collection(tmp_path))

    assert collection.photo_path(2) == tmp_path / "b/3.jpg"


def test_photo_path_refuses_a_hand_built_path_that_leaves_root(tmp_path):
    collection = Collection(
        root=tmp_path, paths=["../secret.jpg"], tags=[["a"]], vocabulary=["a"]
    )

    with pytest.raises(
        ValueError, match=re.escape("photo 0 ('../secret.jpg'): the path")
    ):
        collection.photo_path(0)


def test_subset_picks_rows_in_order_and_keeps_the_vocabulary(tmp_path):
    collection = read_collection(write_collection(tmp_path))

    part = collection.subset(np.array([2, 0, 2]))

    assert part.root == collection.root
    assert part.paths == ["b/3.jpg", "a/1.jpg", "b/3.jpg"]
    assert part.tags == [
        ["love", "sun", "sea"],
        ["sea", "love"],
        ["love", "sun", "sea"],
    ]
    assert part.vocabulary == ["love", "sea", "sun"]
    assert part.label_matrix().shape == (3, 3)


def test_subset_of_nothing_is_an_empty_collection(tmp_path):
    collection = read_collection(write_collection(tmp_path))

    part = collection.subset([])

    assert len(part) == 0
    assert part.label_matrix().shape == (0, 3)
    assert part.tag_counts().tolist() == [0, 0, 0]


def test_subset_does_not_share_tag_lists_with_the_original(tmp_path):
    collection = read_collection(write_collection(tmp_path))

    part = collection.subset([0])
    part.tags[0].append("sun")

    assert collection.tags[0] == ["sea", "love"]


@pytest.mark.parametrize(
    ("ids", "error", "message"),
    [
        ([3], IndexError, "photo position 3 is outside the collection of 3"),
        ([-1], IndexError, "photo position -1 is outside"),
        (np.array([True, False, True]), TypeError, "np.flatnonzero\\(mask\\)"),
        (np.array([0.0, 1.0]), TypeError, "dtype float64"),
        (np.array([[0, 1]]), TypeError, "shape \\(1, 2\\)"),
    ],
)
def test_subset_refuses_bad_positions(tmp_path, ids, error, message):
    collection = read_collection(write_collection(tmp_path))

    with pytest.raises(error, match=message):
        collection.subset(ids)


# Splits.


def test_split_indices_with_a_count_holds_out_that_many_photos():
    train_ids, test_ids = split_indices(20, 5, seed=3)

    assert train_ids.dtype == np.int64 and test_ids.dtype == np.int64
    assert len(train_ids) == 15 and len(test_ids) == 5
    assert np.all(np.diff(train_ids) > 0) and np.all(np.diff(test_ids) > 0)
    assert sorted(np.concatenate([train_ids, test_ids]).tolist()) == list(range(20))


def test_split_indices_with_a_fraction_rounds_the_test_part_up():
    train_ids, test_ids = split_indices(10, 0.25)

    assert (len(train_ids), len(test_ids)) == (7, 3)


def test_split_indices_is_repeatable_and_depends_on_the_seed():
    first = split_indices(1000, 100, seed=7)
    again = split_indices(1000, 100, seed=7)
    other = split_indices(1000, 100, seed=8)

    assert np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize(
    ("n", "test_size", "error", "message"),
    [
        (10, 0, ValueError, "test_size=0 photos must leave both parts non-empty"),
        (10, 10, ValueError, "use 1 to 9, or a fraction"),
        (10, 0.0, ValueError, "strictly between 0 and 1"),
        (10, 1.0, ValueError, "strictly between 0 and 1"),
        (10, 0.95, ValueError, "rounds up to 10 test photos"),
        (10, True, TypeError, "test_size must be an int"),
        (10, "5", TypeError, "test_size must be an int"),
        (1, 1, ValueError, "n must be at least 2, got 1"),
        (10.0, 1, TypeError, "n must be a whole number, got 10.0"),
    ],
)
def test_split_indices_refuses_bad_sizes(n, test_size, error, message):
    with pytest.raises(error, match=message):
        split_indices(n, test_size)


def test_fold_indices_put_every_photo_in_one_test_fold():
    folds = fold_indices(11, 3, seed=1)

    assert len(folds) == 3
    test_sizes = sorted(len(test_ids) for _, test_ids in folds)
    assert test_sizes == [3, 4, 4]
    tested = np.concatenate([test_ids for _, test_ids in folds])
    assert sorted(tested.tolist()) == list(range(11))
    for train_ids, test_ids in folds:
        assert train_ids.dtype == np.int64 and test_ids.dtype == np.int64
        assert np.all(np.diff(test_ids) > 0)
        assert np.intersect1d(train_ids, test_ids).size == 0
        assert len(train_ids) + len(test_ids) == 11


def test_fold_indices_are_repeatable():
    first = fold_indices(50, 5, seed=4)
    again = fold_indices(50, 5, seed=4)

    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize(
    ("n", "folds", "message"),
    [(10, 1, "folds must be at least 2, got 1"), (3, 4, "folds=4 is more than")],
)
def test_fold_indices_refuse_bad_fold_counts(n, folds, message):
    with pytest.raises(ValueError, match=message):
        fold_indices(n, folds)


# A property: whatever is written, within the tolerated variations, reads back.

hashtags = st.text(
    alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=6
)
separators = st.sampled_from([" ", "  ", "\t", " \t "])
line_ends = st.sampled_from(["\n", "\r\n"])
trailing = st.sampled_from(["", " ", "\t", "  \t"])


@st.composite
def collections(draw):
    """Draw a vocabulary, photos with tags, and the text of the three files."""
    vocabulary = draw(st.lists(hashtags, min_size=1, max_size=12, unique=True))
    order = draw(st.permutations(range(len(vocabulary))))
    names = draw(st.lists(hashtags, min_size=1, max_size=15, unique=True))
    paths = [f"photos/{name}.jpg" for name in names]
    tags = [
        draw(st.lists(st.sampled_from(vocabulary), min_size=1, max_size=5, unique=True))
        for _ in paths
    ]
    end = draw(line_ends)

    def text(lines):
        body = end.join(line + draw(trailing) for line in lines)
        return body + draw(st.sampled_from(["", end, end + end, end + " " + end]))

    vocab_text = text([f"{vocabulary[i]}{draw(separators)}{i}" for i in order])
    data_text = text(paths)
    tag_lines = []
    for photo_tags in tags:
        written = photo_tags + draw(st.lists(st.sampled_from(photo_tags), max_size=2))
        tag_lines.append(draw(separators).join(written))
    return vocabulary, paths, tags, data_text, text(tag_lines), vocab_text


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(drawn=collections())
def test_read_collection_returns_what_was_written(tmp_path, drawn):
    vocabulary, paths, tags, data_text, tags_text, vocab_text = drawn
    folder = write_collection(
        tmp_path / "collection", data=data_text, tags=tags_text, vocab=vocab_text
    )

    collection = read_collection(folder)

    assert collection.vocabulary == vocabulary
    assert collection.paths == paths
    assert collection.tags == tags
    assert collection.label_matrix().sum() == sum(len(t) for t in tags)


# The real annotation files, when present on this machine.


def test_real_harrison_annotations_read_quickly_with_the_published_figures():
    started = time.perf_counter()
    collection = read_collection(HARRISON)
    seconds = time.perf_counter() - started

    labels = collection.label_matrix()
    per_photo = np.asarray(labels.sum(axis=1)).ravel()
    counts = collection.tag_counts()
    assert len(collection) == 57_383
    assert len(collection.vocabulary) == 997
    assert round(float(per_photo.mean()), 2) == 4.54
    assert (per_photo.min(), per_photo.max()) == (1.0, 10.0)
    assert collection.vocabulary[int(np.argmax(counts))] == "love"
    assert collection.vocabulary[0] == "love"
    assert seconds < 3.0


def test_real_harrison_split_holds_out_5000_photos():
    collection = read_collection(HARRISON)

    train_ids, test_ids = split_indices(len(collection), 5000, seed=0)

    assert (len(train_ids), len(test_ids)) == (52_383, 5_000)
    assert len(collection.subset(test_ids)) == 5_000


def test_real_flickr8k_sample_reads_with_every_photo_present():
    collection = read_collection(FLICKR)

    assert len(collection) == 987
    assert len(collection.vocabulary) == 997
    assert all(collection.photo_path(i).is_file() for i in range(len(collection)))
