#!/usr/bin/env python
"""Throughput on a GPU: the figures of bench_throughput.py, with CLIP ViT-B-32.

One prepared run of at most a few minutes. It measures what
``bench_throughput.py`` measures (encoder only, end-to-end build and their
ratio, single-photo latency, batch suggestions, peak memory), by default with
the CLIP ViT-B-32 architecture and random weights (``clip:ViT-B-32/random``:
the speed is that of the trained network, the embeddings mean nothing), and
then FAISS search at HARRISON scale (57,383 generated unit vectors with
generated hashtags): one query at a time, and batches.

It checks the CUDA path as it runs: whether the build handed the encoder pinned
batches, and whether the network ran in half precision under autocast. FAISS
runs on the GPU where the installed faiss has GPU support; otherwise the FAISS
figures are CPU figures and the report says so.

It runs on the CPU as well, with small sizes, so that it can be tested anywhere::

    .venv/bin/python scripts/bench_gpu.py --json gpu.json           # on a GPU
    .venv/bin/python scripts/bench_gpu.py --device cpu --photos 16 \\
        --queries 5 --index-size 2000 --search-queries 64              # CPU test
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from harrison_knn import threads

# bench_throughput.py lies beside this script; the folder of a script run as
# "python scripts/bench_gpu.py" is on the path already, but not when imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_throughput

GPU_ENCODER = "clip:ViT-B-32/random"
HARRISON_PHOTOS = 57_383
HARRISON_TAGS = 997
TAGS_PER_PHOTO = 4.54


def parse_arguments(argv: Sequence[str] | None):
    parser = bench_throughput.build_parser(
        description=__doc__,
        encoder=GPU_ENCODER,
        batch_size_help="photos per forward pass (256 on CUDA, 8 on the CPU)",
    )
    parser.set_defaults(repeat=None, sweep_batch_sizes=None)
    parser.add_argument(
        "--index-size",
        type=int,
        default=HARRISON_PHOTOS,
        help="generated vectors in the FAISS search test",
    )
    parser.add_argument(
        "--search-queries",
        type=int,
        default=4096,
        help="queries of the batch FAISS search test",
    )
    args = parser.parse_args(argv)
    on_gpu = _on_gpu(args.device)
    if args.repeat is None:
        # A GPU embeds the 987 photos in about a second; repeating the list
        # makes the timed runs long enough to be steady.
        args.repeat = 8 if on_gpu else 1
    if args.sweep_batch_sizes is None:
        args.sweep_batch_sizes = [64, 128, 512] if on_gpu else []
    bench_throughput.check_arguments(parser, args)
    if args.index_size < 1 or args.search_queries < 1:
        parser.error("--index-size and --search-queries must be at least 1")
    return args


def _on_gpu(device: str | None) -> bool:
    import torch

    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


class PinningRecorder:
    """Records whether the batches that reach an encoder are in pinned memory.

    Wraps the encoder's ``encode_batch``; records only inside
    :meth:`recording`.
    """

    def __init__(self, encoder) -> None:
        self.pinned: list[bool] = []
        self._active = False
        encode = encoder.encode_batch

        def encode_and_record(batch):
            if self._active:
                self.pinned.append(bool(batch.is_pinned()))
            return encode(batch)

        encoder.encode_batch = encode_and_record

    @contextmanager
    def recording(self) -> Iterator[None]:
        self._active = True
        try:
            yield
        finally:
            self._active = False


def network_dtype(encoder) -> str:
    """The dtype of the network's raw output under the encoder's autocast."""
    import torch
    from PIL import Image

    pixels = encoder.preprocess(Image.new("RGB", (320, 240)))
    pixels = torch.stack([pixels, pixels]).to(encoder.device)
    # Limitation: this repeats encode_batch's autocast and calls the encoder's
    # private _embed, since encode_batch returns float32 whatever the network
    # computed in.
    with (
        torch.inference_mode(),
        torch.autocast(
            device_type=encoder.device.type,
            dtype=torch.float16,
            enabled=encoder.device.type == "cuda",
        ),
    ):
        return str(encoder._embed(pixels).dtype).replace("torch.", "")


def generated_index(rows: int, width: int, seed: int = 0):
    """A TagIndex of ``rows`` random unit vectors with HARRISON-like hashtags."""
    import numpy as np
    import scipy.sparse as sp

    from harrison_knn.index import TagIndex

    generator = np.random.default_rng(seed)
    vectors = generator.standard_normal((rows, width), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    per_photo = np.clip(generator.poisson(TAGS_PER_PHOTO, rows), 1, 10)
    columns = generator.integers(0, HARRISON_TAGS, per_photo.sum())
    rows_of = np.repeat(np.arange(rows), per_photo)
    labels = sp.csr_matrix(
        (np.ones(len(columns), dtype=np.float32), (rows_of, columns)),
        shape=(rows, HARRISON_TAGS),
    )
    labels.data[:] = 1.0
    return TagIndex.from_embeddings(
        vectors,
        labels,
        vocabulary=[f"tag{t}" for t in range(HARRISON_TAGS)],
        paths=[f"photo{i}.jpg" for i in range(rows)],
        encoder="generated",
    )


def time_search(rows: int, width: int, queries: int) -> dict:
    """FAISS search and voting at scale: one query at a time, then a batch."""
    import numpy as np

    from harrison_knn.index import gpu_available
    from harrison_knn.suggester import TagSuggester

    index = generated_index(rows, width)
    on_gpu = index.to_gpu()
    suggester = TagSuggester(index)
    generator = np.random.default_rng(1)
    batch = generator.standard_normal((queries, width), dtype=np.float32)
    batch /= np.linalg.norm(batch, axis=1, keepdims=True)

    suggester.score(batch[:1])
    latencies = []
    for row in range(min(200, queries)):
        started = time.perf_counter()
        suggester.score(batch[row : row + 1])
        latencies.append(1000 * (time.perf_counter() - started))
    latencies.sort()

    started = time.perf_counter()
    index.search(batch, suggester.k)
    search_rate = queries / (time.perf_counter() - started)
    started = time.perf_counter()
    suggester.suggest_embeddings(batch)
    suggest_rate = queries / (time.perf_counter() - started)

    if on_gpu:
        where = "GPU"
    elif gpu_available():
        where = "CPU (moving the index to the GPU failed)"
    else:
        where = "CPU: the installed faiss has no GPU support or sees no GPU"
    median = latencies[len(latencies) // 2]
    return {
        "faiss index": f"{rows} x {width} generated unit vectors, on the {where}",
        "faiss one query p50": f"{median:.2f} ms (search and voting)",
        "faiss batch search": f"{search_rate:.0f} queries/s ({queries} queries)",
        "faiss batch suggest": f"{suggest_rate:.0f} queries/s (search and voting)",
        "on_gpu": on_gpu,
    }


def main(argv: Sequence[str] | None = None) -> int:
    threads.prefer_sleeping_threads()
    args = parse_arguments(argv)
    started = time.perf_counter()

    from harrison_knn.encoders import create_encoder

    encoder = create_encoder(args.encoder, device=args.device)
    recorder = PinningRecorder(encoder)
    report = bench_throughput.run(
        args,
        encoder=encoder,
        min_encoder_seconds=10.0 if encoder.device.type == "cuda" else 0.0,
        around_build=recorder.recording,
    )

    search = time_search(args.index_size, encoder.width, args.search_queries)
    report["faiss_on_gpu"] = search.pop("on_gpu")
    report["extra"] = {
        "build batches pinned": f"{sum(recorder.pinned)} of {len(recorder.pinned)}",
        "network output dtype": network_dtype(encoder),
        **search,
        "whole run": f"{time.perf_counter() - started:.0f} s",
    }
    bench_throughput.print_report(report)
    bench_throughput.write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
