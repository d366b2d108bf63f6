"""The benchmark scripts run end to end on a tiny generated collection.

Only what they report is checked, never how fast anything was.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
PHOTOS = 10


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """10 generated JPEG photos in HARRISON layout, with 3 hashtags."""
    root = tmp_path_factory.mktemp("bench") / "photos"
    (root / "images").mkdir(parents=True)
    generator = np.random.default_rng(0)
    paths, tags = [], []
    for i in range(PHOTOS):
        pixels = generator.integers(0, 256, (72, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"p{i}.jpg")
        paths.append(f"images/p{i}.jpg")
        tags.append(["red", "green", "blue"][i % 3])
    (root / "data_list.txt").write_text("\n".join(paths) + "\n")
    (root / "tag_list.txt").write_text("\n".join(tags) + "\n")
    (root / "vocab_index.txt").write_text("red 0\ngreen 1\nblue 2\n")
    return root


def run_script(name, *arguments, json_path):
    # The scripts choose the OpenMP wait policy themselves unless it is set.
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    completed = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / name),
            *map(str, arguments),
            "--json",
            json_path,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=environment,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout, json.loads(Path(json_path).read_text())


def check_common_figures(report, *, workers, queries):
    assert report["photos"] == PHOTOS
    assert report["workers"] == workers
    ratios = sorted(
        r["build_per_s"] / r["encoder_only_per_s"] for r in report["rounds"]
    )
    median = (ratios[(len(ratios) - 1) // 2] + ratios[len(ratios) // 2]) / 2
    assert report["build_to_encoder_ratio"] == pytest.approx(median, abs=2e-3)
    latency = report["single_photo_latency"]
    assert latency["queries"] == queries
    assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["max_ms"]
    assert report["batch_suggestions"]["photos"] == PHOTOS
    assert report["batch_suggestions"]["failed"] == 0
    assert report["peak_memory_mib"]["end"]["process"] > 0


def test_bench_throughput_reports_every_figure(collection, tmp_path):
    stdout, report = run_script(
        "bench_throughput.py",
        collection,
        "--batch-size", 4, "--workers", 1, "--queries", 3, "--rounds", 2,
        "--sweep-batch-sizes", 2, 8,
        json_path=tmp_path / "bench.json",
    )  # fmt: skip

    check_common_figures(report, workers=1, queries=3)
    assert report["encoder"] == "efficientnet-lite0"
    assert report["batch_size"] == 4
    assert len(report["rounds"]) == 2
    assert [row["batch_size"] for row in report["sweep"]] == [2, 8]
    assert [len(row["rounds"]) for row in report["sweep"]] == [2, 2]
    assert report["machine"]["omp_wait_policy"] == "PASSIVE"
    assert "build / encoder only" in stdout


def test_bench_gpu_runs_on_the_cpu_with_small_sizes(collection, tmp_path):
    from harrison_knn.index import gpu_available

    stdout, report = run_script(
        "bench_gpu.py",
        collection,
        "--device", "cpu", "--batch-size", 4, "--workers", 1, "--queries", 2,
        "--rounds", 1,
        "--index-size", 500, "--search-queries", 16,
        json_path=tmp_path / "gpu.json",
    )  # fmt: skip

    check_common_figures(report, workers=1, queries=2)
    assert report["encoder"] == "clip:ViT-B-32/random"
    assert report["machine"]["device"] == "cpu"
    assert report["faiss_on_gpu"] == gpu_available()
    extra = report["extra"]
    # 10 photos in batches of 4; pinned memory is for copies to a GPU only.
    assert extra["build batches pinned"] == "0 of 3"
    assert extra["network output dtype"] == "float32"
    assert extra["faiss index"].startswith("500 x 512 generated unit vectors")
    assert "faiss batch search" in stdout
