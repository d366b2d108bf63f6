import json

import numpy as np
import pytest
from PIL import Image

from harrison_knn.build import build_index
from harrison_knn.cli import main
from harrison_knn.images import PhotoError
from harrison_knn.index import IndexFormatError
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
    assert "5 held-out photos: Precision@1" in out
    assert "Recall@5" in out and "Accuracy@5" in out
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
