import copy
import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image

from harrison_knn.build import build_index
from harrison_knn.cli import main
from harrison_knn.images import PhotoError
from harrison_knn.index import IndexFormatError, TagIndex
from harrison_knn.suggester import TagSuggester


@pytest.fixture(scope="module")
def built(flickr30, tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("index") / "flickr30"
    report = build_index(flickr30, index_dir, num_workers=0, holdout=5, seed=1)
    return flickr30, index_dir, report


@pytest.fixture(scope="module")
def suggester(built):
    return TagSuggester.load(built[1])


def test_build_indexes_all_but_the_held_out_photos(built):
    _, index_dir, report = built

    assert report.photos_listed == 30
    assert report.photos_indexed == 25
    assert report.photos_held_out == 5
    assert report.photos_skipped == 0
    metadata = json.loads((index_dir / "metadata.json").read_text())
    assert metadata["encoder"] == "efficientnet-lite0"
    assert metadata["width"] == 1280
    assert len(metadata["settings"]["held_out"]) == 5


def test_an_indexed_photo_finds_itself_first(built, suggester):
    data, _, _ = built
    path = suggester.index.paths[3]

    suggestion = suggester.suggest(data / path, top=3)

    assert suggestion.neighbours[0].path == path
    assert suggestion.neighbours[0].similarity == pytest.approx(1.0, abs=1e-4)
    own_tags = set(suggestion.neighbours[0].tags)
    assert suggestion.tags[0].tag in own_tags


def test_leave_one_out_hides_the_photo_itself(built, suggester):
    data, _, _ = built
    path = suggester.index.paths[3]

    suggestion = suggester.suggest(data / path, exclude_self=True)

    assert path not in [n.path for n in suggestion.neighbours]
    assert len(suggestion.neighbours) == 20


def test_scores_are_shares_sorted_best_first(built, suggester):
    data, _, _ = built

    suggestion = suggester.suggest(data / suggester.index.paths[0], top=10)

    scores = [t.score for t in suggestion.tags]
    assert scores == sorted(scores, reverse=True)
    assert 0 < scores[-1] <= scores[0] <= 1
    assert sum(n.weight for n in suggestion.neighbours) == pytest.approx(1.0, abs=1e-5)


def test_batch_answers_readable_photos_and_reports_the_rest(built, suggester, tmp_path):
    data, _, _ = built
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    array = np.asarray(Image.open(data / suggester.index.paths[1]).convert("RGB"))

    results = suggester.suggest_many([data / suggester.index.paths[0], broken, array])

    assert results[0].error is None and results[0].tags
    assert results[1].error is not None and results[1].tags == []
    assert results[2].neighbours[0].path == suggester.index.paths[1]


def test_single_unreadable_photo_raises(suggester, tmp_path):
    with pytest.raises(PhotoError, match="missing.jpg"):
        suggester.suggest(tmp_path / "missing.jpg")


def test_another_encoder_is_refused(built):
    with pytest.raises(
        IndexFormatError, match="built with encoder 'efficientnet-lite0'"
    ):
        TagSuggester.load(built[1], encoder="efficientnet-lite2")


def test_cli_suggest_prints_tags_and_timing(built, capsys):
    data, index_dir, _ = built
    photo = data / TagSuggester.load(index_dir).index.paths[2]

    code = main(["suggest", "--index", str(index_dir), str(photo), "--neighbours", "2"])

    out, err = capsys.readouterr()
    assert code == 0
    assert out.splitlines()[0] == str(photo)
    assert out.count("#") >= 2
    assert "once the index was loaded" in err


def test_cli_suggest_json(built, capsys):
    data, index_dir, _ = built
    photo = data / "data_list.txt"

    code = main(["suggest", "--index", str(index_dir), str(photo), "--json"])

    answer = json.loads(capsys.readouterr().out)
    assert code == 1
    assert answer[0]["photo"] == str(photo)
    assert answer[0]["error"]


def test_cli_evaluate_prints_the_three_metrics(built, capsys):
    code = main(["evaluate", "--index", str(built[1]), "--examples", "2"])

    out = capsys.readouterr().out
    assert code == 0
    assert "5 held-out photos:\n  Precision@1" in out
    assert "Recall@5" in out and "Accuracy@5" in out
    assert out.rstrip().endswith("popularity (always the most frequent hashtags)")
    assert out.count("  true:") == 2


def test_threshold_gives_a_variable_length_answer(built, suggester):
    data, _, _ = built
    photo = data / suggester.index.paths[0]
    full = suggester.suggest(photo, top=10)

    threshold = full.tags[2].score

    cut = suggester.suggest(photo, top=10, threshold=threshold)

    expected = [t.tag for t in full.tags if t.score >= threshold]
    assert len(expected) >= 3
    assert len(expected) < len(full.tags)
    assert [t.tag for t in cut.tags] == expected


def test_auto_threshold_needs_a_tuned_index(built, suggester):
    # 25 indexed photos are too few to tune, so no threshold was calibrated.
    assert suggester.index.settings["voting"]["tuned"] is False

    with pytest.raises(ValueError, match="no calibrated threshold"):
        suggester.suggest(built[0] / suggester.index.paths[0], threshold="auto")


# Unreadable photos.


@pytest.fixture(scope="module")
def broken_photos(built, tmp_path_factory):
    """Photo path to the reason it cannot be read, one of each kind."""
    data, _, _ = built
    folder = tmp_path_factory.mktemp("broken")
    real = (data / (data / "data_list.txt").read_text().splitlines()[0]).read_bytes()
    (folder / "truncated.jpg").write_bytes(real[: len(real) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a photo\n")
    (folder / "folder.jpg").mkdir()
    return {
        folder / "truncated.jpg": "the image data is truncated or corrupt (image "
        "file is truncated (",
        folder / "empty.jpg": "the file is empty (0 bytes)",
        folder / "text.jpg": "the file is not an image in any format Pillow can read",
        folder / "missing.jpg": "the file does not exist",
        folder / "folder.jpg": "it is a folder, not a file",
    }


def test_single_unreadable_photo_raises_naming_it_and_why(suggester, broken_photos):
    for path, reason in broken_photos.items():
        with pytest.raises(PhotoError) as caught:
            suggester.suggest(path)

        assert str(caught.value).startswith(f"cannot load photo {path}: {reason}")
        assert caught.value.source == path


def test_unreadable_photos_in_a_batch_leave_the_others_answered(
    built, suggester, broken_photos
):
    data, _, _ = built
    good = [data / suggester.index.paths[0], data / suggester.index.paths[1]]
    alone = [suggester.suggest(path, top=5) for path in good]
    photos = [good[0], *broken_photos, good[1]]

    results = suggester.suggest_many(photos, top=5)

    assert [r.photo for r in results] == [str(p) for p in photos]
    for result, reason in zip(results[1:-1], broken_photos.values()):
        assert result.error.startswith(reason)
        assert result.tags == [] and result.neighbours == []
    for result, expected in zip([results[0], results[-1]], alone):
        assert result.error is None
        assert [t.tag for t in result.tags] == [t.tag for t in expected.tags]
        assert [t.score for t in result.tags] == pytest.approx(
            [t.score for t in expected.tags], abs=1e-6
        )


def test_cli_suggest_of_one_unreadable_photo_prints_the_error_and_exits_1(
    built, tmp_path, capsys
):
    missing = tmp_path / "missing.jpg"

    code = main(["suggest", "--index", str(built[1]), str(missing)])

    out = capsys.readouterr().out
    assert code == 1
    assert out.splitlines() == [str(missing), "  error: the file does not exist"]


def test_cli_suggest_answers_the_readable_photos_of_a_batch(built, tmp_path, capsys):
    data, index_dir, _ = built
    photo = data / TagSuggester.load(index_dir).index.paths[0]
    missing = tmp_path / "missing.jpg"

    code = main(["suggest", "--index", str(index_dir), str(missing), str(photo)])

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[:3] == [str(missing), "  error: the file does not exist", str(photo)]
    assert lines[3].startswith("  #")


# Indexes that do not fit the encoder.


def test_encoder_of_another_width_is_refused(built, suggester):
    narrow = copy.copy(suggester.encoder)
    narrow.width = 512

    with pytest.raises(IndexFormatError) as caught:
        TagSuggester(suggester.index, narrow)

    assert str(caught.value) == (
        "the index was built with encoder 'efficientnet-lite0' (width 1280), not "
        "'efficientnet-lite0' (width 512); use the same encoder or rebuild the index"
    )


def test_loading_with_another_encoder_object_is_refused_naming_both(built, suggester):
    other = copy.copy(suggester.encoder)
    other.name = "clip:ViT-B-32/openai"

    with pytest.raises(IndexFormatError) as caught:
        TagSuggester.load(built[1], encoder=other)

    assert str(caught.value) == (
        f"{built[1]} was built with encoder 'efficientnet-lite0', not "
        "'clip:ViT-B-32/openai'; query it with the same encoder or rebuild the index"
    )


def test_loading_with_a_search_space_setting_is_refused(built):
    with pytest.raises(ValueError) as caught:
        TagSuggester.load(built[1], prototype_pull=0.5, projection_mix=0.5)

    assert str(caught.value) == (
        "projection_mix and prototype_pull cannot be changed when an index is "
        "loaded: the indexed vectors are stored in the space the build chose; "
        "build again with --projection-mix or --prototype-pull"
    )


# Queries at the edges.


def test_k_larger_than_the_index_uses_every_indexed_photo(built, suggester):
    data, _, _ = built
    photo = data / suggester.index.paths[4]
    every = TagSuggester(suggester.index, suggester.encoder, k=25)
    more = TagSuggester(suggester.index, suggester.encoder, k=100)

    expected = every.suggest(photo, top=10)
    answer = more.suggest(photo, top=10)
    left_out = more.suggest(photo, top=10, exclude_self=True)

    assert len(answer.neighbours) == 25
    assert [n.path for n in answer.neighbours] == [n.path for n in expected.neighbours]
    assert sum(n.weight for n in answer.neighbours) == pytest.approx(1.0, abs=1e-6)
    assert [t.tag for t in answer.tags] == [t.tag for t in expected.tags]
    assert [t.score for t in answer.tags] == pytest.approx(
        [t.score for t in expected.tags], abs=1e-6
    )
    assert len(left_out.neighbours) == 24
    assert suggester.index.paths[4] not in [n.path for n in left_out.neighbours]


@pytest.fixture(scope="module")
def single(shared_data, tmp_path_factory, suggester):
    """An index of one photo, and its folder."""
    from conftest import copy_flickr_subset

    data = copy_flickr_subset(
        shared_data, tmp_path_factory.mktemp("single") / "data", 1
    )
    index_dir = data.parent / "index"
    build_index(data, index_dir, encoder=suggester.encoder, num_workers=0)
    return data, TagSuggester.load(index_dir, encoder=suggester.encoder)


def test_index_of_a_single_photo_answers_with_that_photo_alone(built, single):
    data, one = single
    other_photo = built[0] / (built[0] / "data_list.txt").read_text().splitlines()[9]
    own_tags = (data / "tag_list.txt").read_text().split()

    answer = one.suggest(other_photo, top=10)

    assert len(one.index) == 1
    assert [n.path for n in answer.neighbours] == [one.index.paths[0]]
    assert answer.neighbours[0].weight == 1.0
    assert sorted(t.tag for t in answer.tags) == sorted(own_tags)
    assert [t.score for t in answer.tags] == [1.0] * len(own_tags)


def test_query_equal_to_the_only_indexed_photo(single):
    data, one = single
    photo = data / one.index.paths[0]

    itself = one.suggest(photo, top=10)
    left_out = one.suggest(photo, top=10, exclude_self=True)

    assert itself.neighbours[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [t.score for t in itself.tags] == [1.0] * len(itself.tags)
    assert left_out.neighbours == [] and left_out.tags == []
    assert left_out.error is None


def test_exclude_self_finds_the_indexed_photo_by_relative_path(
    built, suggester, monkeypatch
):
    data, _, _ = built
    path = suggester.index.paths[3]
    monkeypatch.chdir(data)

    answer = suggester.suggest(path, exclude_self=True)

    assert path not in [n.path for n in answer.neighbours]


def test_exclude_self_cannot_recognise_a_photo_given_as_pixels(built, suggester):
    data, _, _ = built
    path = suggester.index.paths[3]
    pixels = np.asarray(Image.open(data / path).convert("RGB"))

    answer = suggester.suggest(pixels, exclude_self=True)

    # Limitation: only a path tells which indexed photo a query is.
    assert answer.neighbours[0].path == path


def test_empty_batch_gives_no_suggestions(suggester):
    assert suggester.suggest_many([]) == []
    assert suggester.suggest_embeddings(np.zeros((0, 1280), np.float32)) == []
    assert suggester.suggest_embeddings(np.zeros((0, 1280)), exclude_ids=[]) == []


# One suggester, many threads.


def test_one_suggester_used_from_8_threads_answers_as_from_one(
    built, suggester, broken_photos
):
    data, _, _ = built
    held_out = suggester.index.settings["held_out"][0]
    photos = [data / path for path in suggester.index.paths[:4]]
    photos += [data / held_out, next(iter(broken_photos))]

    def work(job):
        # Even jobs ask for a batch (several torch threads), odd ones for one
        # photo (one thread), so the threads change torch's thread count under
        # each other.
        if job % 2 == 0:
            return [s.to_dict() for s in suggester.suggest_many(photos, top=8)]
        return [suggester.suggest(photos[job // 2], top=8).to_dict()]

    alone = [work(0)] + [work(job) for job in range(1, 8, 2)]
    start = threading.Barrier(8)

    def work_together(job):
        start.wait()
        return work(job)

    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(work_together, range(8)))

    assert together[0::2] == [alone[0]] * 4
    assert together[1::2] == alone[1:]
    # Afterwards a batch is still answered as before.
    assert work(0) == alone[0]


def test_cli_suggest_with_a_damaged_index_exits_2(built, tmp_path, capsys):
    data, index_dir, _ = built
    damaged = tmp_path / "damaged"
    shutil.copytree(index_dir, damaged, ignore=shutil.ignore_patterns("embeddings"))
    vectors = next(damaged.glob("vectors-*.faiss"))
    vectors.write_bytes(vectors.read_bytes()[:-1])

    code = main(["suggest", "--index", str(damaged), str(data / "data_list.txt")])

    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"harrison-knn suggest: {vectors} is damaged (its checksum does not match "
        f"{damaged}/metadata.json); rebuild the index with 'harrison-knn build'"
    )


# An index searched in the learnt space, voting with reconstruction weights.


@pytest.fixture(scope="module")
def built_projected(flickr30, tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("index") / "projected"
    settings = {"projection_mix": 0.5, "weighting": "reconstruction", "ridge": 2.0}
    build_index(
        flickr30,
        index_dir,
        num_workers=0,
        holdout=5,
        seed=1,
        voting_settings={**settings, "k": 5},
        tune=False,
    )
    return flickr30, index_dir


def test_a_projected_index_is_saved_with_its_projection(built_projected):
    _, index_dir = built_projected

    metadata = json.loads((index_dir / "metadata.json").read_text())
    suggester = TagSuggester.load(index_dir)

    assert metadata["width"] == 1280
    assert metadata["settings"]["voting"]["projection_mix"] == 0.5
    assert metadata["files"]["projection"]["name"].startswith("projection-")
    assert suggester.index.projection.mix == 0.5
    assert suggester.index.projection.weights.shape == (1280, 997)
    assert suggester.index.vectors.d == 1280 + 997
    assert (suggester.weighting, suggester.ridge, suggester.k) == (
        "reconstruction",
        2.0,
        5,
    )


def test_an_indexed_photo_finds_itself_first_in_the_projected_space(built_projected):
    data, index_dir = built_projected
    suggester = TagSuggester.load(index_dir)
    path = suggester.index.paths[3]

    suggestion = suggester.suggest(data / path, top=3)

    assert suggestion.neighbours[0].path == path
    assert suggestion.neighbours[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert sum(n.weight for n in suggestion.neighbours) == pytest.approx(1.0, abs=1e-5)
    assert suggestion.tags[0].tag in suggestion.neighbours[0].tags


def test_cli_build_prints_the_search_space(flickr30, tmp_path, capsys):
    code = main(
        ["-q", "build", str(flickr30), "--index", str(tmp_path / "i")]
        + ["--workers", "0", "--no-tune", "--projection-mix", "0.75"]
        + ["--weighting", "reconstruction", "--ridge", "3"]
    )

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[-1] == (
        "voting (options given, defaults for the rest): k=20 weighting=reconstruction "
        "ridge=3.0 popularity correction=0.0 diversity=0.0 "
        "search space=embeddings 0.75 + predicted hashtags 0.25"
    )


def test_cli_build_pulls_photos_toward_their_prototypes(flickr30, tmp_path, capsys):
    index_dir = tmp_path / "i"

    code = main(
        ["-q", "build", str(flickr30), "--index", str(index_dir), "--holdout", "5"]
        + ["--workers", "0", "--no-tune", "--prototype-pull", "0.5"]
    )

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[-1] == (
        "voting (options given, defaults for the rest): k=20 weighting=softmax "
        "temperature=0.05 popularity correction=0.0 diversity=0.0 "
        "search space=embeddings, indexed photos pulled 0.5 toward their hashtags"
    )
    suggester = TagSuggester.load(index_dir)
    index = suggester.index
    assert index.prototypes.pull == 0.5
    assert (index.prototypes.tag_count, index.prototypes.width) == (997, 1280)
    # A photo's similarity to its own stored row is half its cosine with itself
    # and half its cosine with its prototype.
    path = index.paths[3]
    suggestion = suggester.suggest(flickr30 / path, top=3)
    own = index.embeddings(np.array([3]))
    prototype = index.prototypes.prototypes(index.labels[3])
    found = {n.path: n.similarity for n in suggestion.neighbours}
    assert found[path] == pytest.approx(
        0.5 + 0.5 * (own @ prototype.T).item(), abs=1e-4
    )


def test_cli_build_prints_no_temperature_for_count_votes(flickr30, tmp_path, capsys):
    code = main(
        ["-q", "build", str(flickr30), "--index", str(tmp_path / "i")]
        + ["--workers", "0", "--no-tune", "--weighting", "count"]
    )

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[-1] == (
        "voting (options given, defaults for the rest): k=20 weighting=count "
        "popularity correction=0.0 diversity=0.0 search space=embeddings"
    )


def test_cli_build_without_voting_options_prints_the_defaults(
    flickr30, tmp_path, capsys
):
    code = main(
        ["-q", "build", str(flickr30), "--index", str(tmp_path / "i")]
        + ["--workers", "0", "--no-tune"]
    )

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[-1] == (
        "voting (defaults): k=20 weighting=softmax temperature=0.05 "
        "popularity correction=0.0 diversity=0.0 search space=embeddings"
    )


def test_cli_build_says_why_a_small_index_was_not_tuned(flickr30, tmp_path, capsys):
    code = main(
        ["-q", "build", str(flickr30), "--index", str(tmp_path / "i")]
        + ["--workers", "0", "--k", "7"]
    )

    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[-1] == (
        "voting (options given, defaults for the rest; not tuned: 30 photos "
        "indexed, tuning needs 50): k=7 weighting=softmax temperature=0.05 "
        "popularity correction=0.0 diversity=0.0 search space=embeddings"
    )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--projection-mix", "0", "projection_mix must lie in (0, 1], got 0.0"),
        ("--projection-mix", "1.5", "projection_mix must lie in (0, 1], got 1.5"),
        ("--ridge", "-2", "ridge must be > 0, got -2.0"),
        ("--ridge", "nan", "ridge must be > 0, got nan"),
        ("--ridge", "inf", "ridge must be a finite number, got inf"),
        ("--projection-mix", "inf", "projection_mix must lie in (0, 1], got inf"),
        ("--projection-mix", "nan", "projection_mix must lie in (0, 1], got nan"),
        ("--temperature", "0", "temperature must be a finite number > 0, got 0.0"),
        ("--prototype-pull", "1", "prototype_pull must lie in [0, 0.99], got 1.0"),
        ("--prototype-pull", "-0.5", "prototype_pull must lie in [0, 0.99], got -0.5"),
        ("--prototype-pull", "nan", "prototype_pull must lie in [0, 0.99], got nan"),
        ("--temperature", "inf", "temperature must be a finite number > 0, got inf"),
        ("--diversity", "1", "diversity must lie in [0, 1), got 1.0"),
        ("--diversity", "nan", "diversity must lie in [0, 1), got nan"),
    ],
)
def test_cli_build_with_a_bad_voting_setting_exits_2_before_reading_photos(
    flickr30, tmp_path, capsys, option, value, message
):
    index_dir = tmp_path / "index"

    code = main(
        ["-q", "build", str(flickr30), "--index", str(index_dir), option, value]
    )

    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"harrison-knn build: {message}"
    assert not index_dir.exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--ridge", "0", "ridge must be > 0, got 0.0"),
        # Before, an infinite ridge gave every neighbour weight 0, so every
        # photo was answered with no hashtag and exit code 0.
        ("--ridge", "inf", "ridge must be a finite number, got inf"),
        # Before, an infinite temperature was accepted and gave equal votes.
        ("--temperature", "inf", "temperature must be a finite number > 0, got inf"),
        ("--temperature", "-1", "temperature must be a finite number > 0, got -1.0"),
        (
            "--popularity-correction",
            "1.5",
            "popularity_correction must lie in [0, 1], got 1.5",
        ),
        ("--diversity", "-0.25", "diversity must lie in [0, 1), got -0.25"),
        ("--diversity", "1", "diversity must lie in [0, 1), got 1.0"),
    ],
)
def test_cli_suggest_with_a_bad_voting_setting_exits_2_before_reading_photos(
    built, capsys, monkeypatch, option, value, message
):
    data, index_dir, _ = built
    # Any photo read would fail the test: the settings are checked first.
    monkeypatch.setattr(
        "harrison_knn.embedding.load_photo",
        lambda *args, **kwargs: pytest.fail("a photo was read"),
    )

    code = main(
        ["suggest", "--index", str(index_dir), option, value]
        + [str(data / "data_list.txt")]
    )

    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"harrison-knn suggest: {message}"
    )


@pytest.mark.parametrize(
    ("weighting", "diversity"),
    [("softmax", 0.0), ("reconstruction", 0.0), ("softmax", 0.5)],
)
def test_an_empty_index_answers_with_no_hashtag(weighting, diversity):
    index = TagIndex.from_embeddings(
        np.zeros((0, 4), dtype=np.float32),
        np.zeros((0, 3), dtype=np.float32),
        vocabulary=["sea", "dog", "sun"],
        paths=[],
        encoder="test-encoder",
    )
    suggester = TagSuggester(index, k=3, weighting=weighting, diversity=diversity)

    answers = suggester.suggest_embeddings(np.eye(2, 4, dtype=np.float32))

    # Before, scipy refused the empty slots' column 0 (and the reconstruction
    # weighting's gather, and at first the diversity's, raised IndexError).
    assert [(a.tags, a.neighbours, a.error) for a in answers] == [
        ([], [], None),
        ([], [], None),
    ]


def test_diversity_moves_an_unexplained_neighbours_hashtag_up():
    # Two near photos tagged sea and sun, one a little farther tagged dog.
    index = TagIndex.from_embeddings(
        np.eye(3, 4, dtype=np.float32),
        np.array([[1, 0, 1], [1, 0, 1], [0, 1, 0]], dtype=np.float32),
        vocabulary=["sea", "dog", "sun"],
        paths=["a.jpg", "b.jpg", "c.jpg"],
        encoder="test-encoder",
    )
    query = np.array([[0.6, 0.6, 0.5, 0.0]], dtype=np.float32)
    query /= np.linalg.norm(query)

    plain = TagSuggester(index, k=3, weighting="count").suggest_embeddings(query)[0]
    diverse = TagSuggester(
        index, k=3, weighting="count", diversity=0.75
    ).suggest_embeddings(query)[0]

    # Equal votes of 1/3: sea and sun 2/3, dog 1/3. Once sea is placed, a and b
    # vote with a quarter of their weight: sun 1/6, dog still 1/3.
    assert [(t.tag, round(t.score, 4)) for t in plain.tags] == [
        ("sea", 0.6667),
        ("sun", 0.6667),
        ("dog", 0.3333),
    ]
    assert [(t.tag, round(t.score, 4)) for t in diverse.tags] == [
        ("sea", 0.6667),
        ("dog", 0.3333),
        ("sun", 0.1667),
    ]
    # The neighbours' own weights are what they were.
    assert [n.weight for n in diverse.neighbours] == [
        n.weight for n in plain.neighbours
    ]


def test_a_saved_diversity_is_the_default_and_an_option_overrides_it(
    flickr30, tmp_path
):
    index_dir = tmp_path / "index"
    build_index(
        flickr30,
        index_dir,
        num_workers=0,
        voting_settings={"diversity": 0.5},
        tune=False,
    )

    assert TagSuggester.load(index_dir).diversity == 0.5
    assert TagSuggester.load(index_dir, diversity=0.0).diversity == 0.0


def test_stored_zeros_in_the_labels_are_no_hashtags_of_a_neighbour():
    labels = sp.csr_matrix(
        (
            np.array([1, 0, 0, 1], dtype=np.float32),
            np.array([0, 1, 0, 2]),
            np.array([0, 2, 4]),
        ),
        shape=(2, 3),
    )
    index = TagIndex.from_embeddings(
        np.eye(2, 4, dtype=np.float32),
        labels,
        vocabulary=["sea", "dog", "sun"],
        paths=["a.jpg", "b.jpg"],
        encoder="test-encoder",
    )

    answer = TagSuggester(index, k=2).suggest_embeddings(
        np.eye(1, 4, dtype=np.float32)
    )[0]

    # Before, the stored zeros were listed: a.jpg showed #sea #dog.
    assert [(n.path, n.tags) for n in answer.neighbours] == [
        ("a.jpg", ("sea",)),
        ("b.jpg", ("sun",)),
    ]
    # The caller's matrix is left as it was.
    assert labels.nnz == 4


def test_loading_with_a_bad_voting_setting_is_refused_before_the_index_is_read(
    tmp_path,
):
    # No index at all: the setting is refused first.
    with pytest.raises(ValueError, match=r"^diversity must lie in \[0, 1\), got 1.0$"):
        TagSuggester.load(tmp_path / "missing", diversity=1.0)
