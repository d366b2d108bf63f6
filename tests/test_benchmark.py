"""Tests of harrison_knn.benchmark: a tiny run end to end, the scale generator."""

import contextlib
import io
import json
import types

import numpy as np
import pytest
import scipy.sparse as sp

from harrison_knn import cli
from harrison_knn.benchmark import (
    BENCHMARK_KS,
    BLEND_HEAD_WEIGHTS,
    DEFAULT_METHODS,
    BlendedMethod,
    PopularityMethod,
    VotingMethod,
    _blend,
    _blend_objective,
    main,
    run_benchmark,
    scale_embeddings,
)
from harrison_knn.build import embedding_store_for
from harrison_knn.dataset import fold_indices
from harrison_knn.heads import head_folder, load_head
from harrison_knn.index import TagIndex

N_PHOTOS = 200
N_TAGS = 20


def write_annotations(folder, n_photos=N_PHOTOS, n_tags=N_TAGS, seed=0):
    """A HARRISON-layout folder (annotations only, no photos): 1 to 3 hashtags
    a photo, drawn with falling frequencies so that popularity has a floor."""
    rng = np.random.default_rng(seed)
    vocabulary = [f"tag{t}" for t in range(n_tags)]
    frequency = 1.0 / np.arange(1, n_tags + 1)
    frequency /= frequency.sum()
    tag_lines = []
    for _ in range(n_photos):
        count = rng.integers(1, 4)
        chosen = rng.choice(n_tags, size=count, replace=False, p=frequency)
        tag_lines.append(" ".join(vocabulary[t] for t in chosen))
    folder.mkdir(parents=True)
    paths = [f"photos/{i}.jpg" for i in range(n_photos)]
    (folder / "data_list.txt").write_text("\n".join(paths) + "\n")
    (folder / "tag_list.txt").write_text("\n".join(tag_lines) + "\n")
    (folder / "vocab_index.txt").write_text(
        "".join(f"{tag} {i}\n" for i, tag in enumerate(vocabulary))
    )
    return folder


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory):
    """The scale mode on 200 photos, 20 hashtags, width 32, 2 folds."""
    root = tmp_path_factory.mktemp("benchmark")
    data = write_annotations(root / "data")
    output = root / "out"
    arguments = ["--scale", str(data), "--width", "32", "--noise", "0.5"]
    arguments += ["--folds", "2", "--torch-epochs", "30", "--output", str(output)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        # Through the command line, as `harrison-knn -q benchmark ...` runs it.
        status = cli.main(["-q", "benchmark", *arguments])
    assert status == 0
    return printed.getvalue(), output


def test_scale_run_prints_a_table_row_per_method(scale_run):
    printed, output = scale_run

    for method in DEFAULT_METHODS:
        assert printed.count(f"| {method} |") == 3  # quality, recall and cost
    assert "| voting+logistic |" not in printed
    assert "| method | P@1 | P@3 | P@5 | A@5 | mAP | F1@5 |" in printed
    assert printed.startswith((output / "tables.md").read_text())


def test_scale_run_json_holds_every_figure_per_split(scale_run):
    _, output = scale_run

    report = json.loads((output / "benchmark.json").read_text())

    assert report["methods"] == list(DEFAULT_METHODS)
    assert len(report["splits"]) == 2 * len(DEFAULT_METHODS)
    metrics = [f"{p}@{k}" for p, ks in BENCHMARK_KS.items() for k in ks] + ["mAP"]
    costs = ["fit_seconds", "queries_per_second", "latency_ms", "peak_memory_mib"]
    for method in DEFAULT_METHODS:
        assert set(metrics + costs) <= set(report["summary"][method])
    first = report["splits"][0]
    assert first["method"] == "voting"
    assert first["n_train"] + first["n_test"] == N_PHOTOS
    assert report["settings"]["splits"] == {
        "kind": "fold_indices",
        "folds": 2,
        "seed": 0,
    }
    assert report["settings"]["data"]["hashtags"] == N_TAGS
    assert report["settings"]["method_parameters"]["voting"]["k"] == 20
    assert report["settings"]["method_parameters"]["torch-linear"]["epochs"] == 30


def test_scale_run_writes_the_plot(scale_run):
    _, output = scale_run

    png = (output / "precision-recall.png").read_bytes()

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 10_000


def test_voting_beats_popularity_by_30_points_on_easy_data(scale_run):
    _, output = scale_run

    summary = json.loads((output / "benchmark.json").read_text())["summary"]

    # Noise 0.5 against a unit signal: a photo's neighbours share its hashtags.
    voting = summary["voting"]["P@1"]["mean"]
    popularity = summary["popularity"]["P@1"]["mean"]
    assert voting >= popularity + 0.30
    assert summary["logistic"]["P@1"]["mean"] >= popularity + 0.30


def test_scale_embeddings_have_the_stated_shape_and_unit_rows():
    labels = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]], np.float32))

    embeddings = scale_embeddings(labels, width=16, noise=4.0, seed=3)

    assert embeddings.shape == (3, 16)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(
        embeddings, scale_embeddings(labels, width=16, noise=4.0, seed=3)
    )


def test_scale_embeddings_without_noise_are_the_hashtag_directions():
    labels = sp.csr_matrix(np.array([[1, 0], [0, 1], [1, 1]], np.float32))

    embeddings = scale_embeddings(labels, width=64, noise=0.0, seed=0)

    # Photo 3 carries both hashtags: its embedding halves the angle between them.
    middle = embeddings[0] + embeddings[1]
    np.testing.assert_allclose(
        embeddings[2], middle / np.linalg.norm(middle), atol=1e-6
    )


def test_scale_embeddings_refuse_a_negative_noise():
    with pytest.raises(ValueError, match="noise must be 0 or more, got -1"):
        scale_embeddings(sp.csr_matrix(np.eye(2, dtype=np.float32)), noise=-1)


class NearestTrainingPhoto:
    """A method added for one test: the hashtags of the most similar photo."""

    def fit(self, embeddings, labels):
        self.embeddings, self.labels = embeddings, labels.toarray()
        return self

    def scores(self, embeddings):
        nearest = np.argmax(embeddings @ self.embeddings.T, axis=1)
        return self.labels[nearest]


def test_a_new_method_is_one_more_row():
    labels = sp.csr_matrix(np.eye(10, dtype=np.float32)[np.arange(200) % 10])
    embeddings = scale_embeddings(labels, width=32, noise=0.1, seed=1)
    methods = {"nearest": NearestTrainingPhoto, "popularity": PopularityMethod}

    result = run_benchmark(
        embeddings, labels, fold_indices(200, 2, 0), methods, batch_queries=10
    )

    assert result.methods == ["nearest", "popularity"]
    assert result.summary().loc["nearest", ("P@1", "mean")] == 1.0
    assert result.summary().loc["popularity", ("P@1", "mean")] <= 0.15
    assert "| nearest | 100.0 ± 0.0 |" in result.markdown_tables()


def test_voting_method_scores_as_the_weighted_share_of_neighbours():
    labels = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1]], np.float32))
    embeddings = np.eye(3, 4, dtype=np.float32)

    method = VotingMethod(k=3, weighting="count").fit(embeddings, labels)

    np.testing.assert_allclose(method.scores(embeddings[:1]), [[2 / 3, 1 / 3]])


def test_index_mode_reads_the_cache_and_saves_heads_beside_the_index(tmp_path):
    data = write_annotations(tmp_path / "data", n_photos=60, n_tags=12)
    labels_text = (data / "tag_list.txt").read_text().splitlines()
    paths = (data / "data_list.txt").read_text().splitlines()
    vocabulary = [f"tag{t}" for t in range(12)]
    labels = sp.csr_matrix(
        np.array(
            [[tag in line.split() for tag in vocabulary] for line in labels_text],
            np.float32,
        )
    )
    embeddings = scale_embeddings(labels, width=1280, noise=0.5, seed=0)
    index_dir = tmp_path / "indexes" / "tiny"
    TagIndex.from_embeddings(
        embeddings,
        labels,
        vocabulary=vocabulary,
        paths=paths,
        encoder="efficientnet-lite0",
        data_root=data,
    ).save(index_dir)
    # A cache as a build leaves it, so no photo (there are none) is embedded.
    encoder = types.SimpleNamespace(name="efficientnet-lite0", width=1280)
    embedding_store_for(index_dir, encoder).add(paths, embeddings)
    output = tmp_path / "out"

    status = main(
        [
            "--index",
            str(index_dir),
            "--folds",
            "2",
            "--methods",
            "voting",
            "logistic",
            "--save-heads",
            "--output",
            str(output),
            "-q",
        ]
    )

    assert status == 0
    report = json.loads((output / "benchmark.json").read_text())
    assert report["settings"]["data"]["photos_cached_before"] == 60
    assert report["methods"] == ["voting", "logistic"]
    head = load_head(index_dir, "logistic")
    assert head_folder(index_dir, "logistic") == index_dir / "heads" / "logistic"
    assert head.predict_scores(embeddings[:3]).shape == (3, 12)


def xor_photos(n_photos=240, seed=0):
    """Photos in four clusters whose hashtag is the XOR of two directions:
    hashtag 0 on the (+, +) and (-, -) clusters, hashtag 1 on the other two,
    so no linear head can tell them apart and neighbours can. Hashtags 2 to 5
    are carried by no photo (recall at 5 needs 5 hashtags)."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_photos, 2))
    embeddings = np.zeros((n_photos, 8), dtype=np.float32)
    embeddings[:, :2] = signs
    embeddings += rng.normal(0, 0.1, embeddings.shape).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    tag = (signs[:, 0] != signs[:, 1]).astype(int)
    labels = sp.csr_matrix(np.eye(6, dtype=np.float32)[tag])
    return embeddings, labels


def test_blend_keeps_to_voting_where_a_linear_head_cannot_separate():
    from harrison_knn.linear import LogisticHead

    embeddings, labels = xor_photos()

    blend = BlendedMethod(LogisticHead()).fit(embeddings, labels)

    # Voting alone is right on every validation photo; the head alone guesses.
    assert blend.validation_objective_[0.0] == 1.0
    assert blend.validation_objective_[1.0] < 0.9
    assert blend.head_weight_ == 0.0
    assert set(blend.validation_objective_) == set(BLEND_HEAD_WEIGHTS)
    assert blend.chosen_["head_weight"] == 0.0
    assert blend.chosen_["k"] == blend.tuning_.parameters.k
    # Refitted on all 240 photos, with the head never fitted itself.
    assert len(blend.voting_.suggester_.index) == 240
    assert blend.head_.coef_.shape == (6, 8)
    assert not hasattr(blend.head, "coef_")


@pytest.mark.parametrize(
    ("photos", "share", "message"),
    [
        # 3 of 12 photos kept aside leave 9, and the 5 inner folds need 10.
        (
            12,
            0.2,
            (
                "the blend keeps 3 of 12 photos aside to choose the head's share "
                "and tunes voting on the other 9, but tuning needs at least 10"
            ),
        ),
        (40, 0.0, r"validation_share must lie in \(0, 1\), got 0.0"),
        (40, 1.0, r"validation_share must lie in \(0, 1\), got 1.0"),
        (40, 5, r"validation_share must lie in \(0, 1\), got 5"),
        (40, float("nan"), r"validation_share must lie in \(0, 1\), got nan"),
        (40, "0.2", "validation_share must be a number, got '0.2'"),
    ],
)
def test_blend_refuses_too_few_photos_or_a_bad_share_naming_it(photos, share, message):
    from harrison_knn.linear import LogisticHead

    embeddings, labels = xor_photos()

    with pytest.raises(ValueError, match=f"^{message}$"):
        BlendedMethod(LogisticHead(), validation_share=share).fit(
            embeddings[:photos], labels[:photos]
        )


def test_blend_objective_with_fewer_than_five_hashtags_ranks_them_all():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]], np.float32)
    truth = sp.csr_matrix(np.array([[0, 0, 1], [1, 0, 0]], np.float32))

    # Both first places are wrong (P@1 0); within the top 3, every hashtag,
    # both truths are found (R@3 and A@3 1). Before, R@5 of 3 hashtags raised.
    assert _blend_objective(scores, truth) == pytest.approx((0.0 + 1.0 + 1.0) / 3)


def test_blend_mixes_votes_and_probabilities_by_the_head_weight():
    votes = np.array([[0.5, 0.1, 0.0]], np.float32)
    probabilities = np.array([[0.2, 0.9, 0.4]], np.float32)

    np.testing.assert_allclose(
        _blend(votes, probabilities, 0.25), [[0.425, 0.3, 0.1]], rtol=1e-6
    )
    np.testing.assert_array_equal(_blend(votes, probabilities, 0.0), votes)


def test_blend_rows_run_when_named_and_record_their_choices(tmp_path):
    data = write_annotations(tmp_path / "data")
    output = tmp_path / "out"

    status = main(
        [
            "--scale",
            str(data),
            "--width",
            "32",
            "--noise",
            "0.5",
            "--folds",
            "2",
            "--methods",
            "tuned-voting",
            "voting+torch",
            "--torch-epochs",
            "7",
            "--output",
            str(output),
            "-q",
        ]
    )

    assert status == 0
    report = json.loads((output / "benchmark.json").read_text())
    assert report["methods"] == ["tuned-voting", "voting+torch"]
    blend_parameters = report["settings"]["method_parameters"]["voting+torch"]
    assert blend_parameters["validation_share"] == 0.2
    assert blend_parameters["head"]["epochs"] == 7
    choices = report["settings"]["choices"]
    assert [(row["method"], row["split"]) for row in choices] == [
        ("tuned-voting", 1),
        ("voting+torch", 1),
        ("tuned-voting", 2),
        ("voting+torch", 2),
    ]
    assert all(row["head_weight"] in BLEND_HEAD_WEIGHTS for row in choices[1::2])
    assert all("head_weight" not in row and row["k"] >= 1 for row in choices[::2])
