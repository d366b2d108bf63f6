#!/usr/bin/env python
"""Throughput of harrison-knn on real photos, measured in one run.

On the same photos, one after the other:

1. end-to-end build: ``embed_photos`` from the JPEG files on disk to embeddings
   in an embedding store, the path ``build_index`` takes, with its decoding
   workers. The files are read once before and the network runs one untimed
   batch, so that neither disk reads nor first-call set-up count;
2. decoding: every photo decoded and preprocessed in this process, one thread;
3. encoder only: the network on those preprocessed tensors, already in memory.
   The ratio of 1 to 3 says how much of the encoder's own speed a build keeps.
   Steps 1 and 3 alternate ``--rounds`` times and the medians are reported;
4. the index saved and loaded back with ``TagSuggester.load``;
5. single-photo latency: ``TagSuggester.suggest`` on one photo file at a time;
6. batch suggestions: ``TagSuggester.suggest_many`` on all the photos, and
   ``suggest_embeddings`` on their embeddings (search and voting only);
7. peak memory (``ru_maxrss``) of this process and of its largest worker,
   after the build and at the end (which includes step 2's tensors);
8. with ``--sweep-batch-sizes``, steps 1 and 3 again at each batch size.

It also reports how busy the machine was with other programs during the run,
from ``/proc/stat``: their figures are only comparable on an otherwise idle
machine. Results go to the screen, and with ``--json FILE`` to a file.

Usage, from the project folder::

    .venv/bin/python scripts/bench_throughput.py
    .venv/bin/python scripts/bench_throughput.py ../shared/data/flickr8k-1k \\
        --photos 500 --batch-size 16 --workers 1 --json bench.json
    .venv/bin/python scripts/bench_throughput.py --sweep-batch-sizes 8 16 32 64

The thread settings are those of the ``harrison-knn`` command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

# Importing the thread policy loads neither torch nor faiss, so it can still
# choose how their OpenMP threads wait, exactly as the command line does.
from harrison_knn import threads

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = PROJECT.parent / "shared" / "data" / "flickr8k-1k"


def build_parser(
    *,
    description: str = __doc__,
    encoder: str | None = None,
    batch_size: int | None = None,
    batch_size_help: str | None = None,
    queries: int = 50,
    repeat: int = 1,
    rounds: int = 3,
) -> argparse.ArgumentParser:
    """Command-line options shared with ``bench_gpu.py``, with their defaults."""
    from harrison_knn.encoders import DEFAULT_ENCODER

    parser = argparse.ArgumentParser(
        description=description.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "data_dir",
        nargs="?",
        default=str(DEFAULT_DATA),
        help="a photo folder in HARRISON layout",
    )
    parser.add_argument(
        "--photos", type=int, default=None, help="use the first N photos (all)"
    )
    parser.add_argument("--encoder", default=encoder or DEFAULT_ENCODER)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=batch_size,
        help=batch_size_help or "photos per forward pass (the library's default)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding processes of the build (the library's default)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (cuda when seen, else cpu)"
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=queries,
        help="single-photo suggestions timed for the latency figures",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=repeat,
        help="embed the photo list this many times over in the timed runs",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=rounds,
        help="alternating timed builds and encoder-only runs; medians are kept",
    )
    parser.add_argument(
        "--sweep-batch-sizes",
        type=int,
        nargs="*",
        default=[],
        metavar="B",
        help="also time the encoder and the build at each of these batch sizes",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Refuse counts below 1 (workers below 0) through ``parser.error``."""
    for name in ("photos", "batch_size", "queries", "repeat", "rounds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if any(size < 1 for size in args.sweep_batch_sizes):
        parser.error(f"batch sizes must be at least 1, got {args.sweep_batch_sizes}")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be 0 or more, got {args.workers}")
    return args


class MachineLoad:
    """CPU time the whole machine and this process (with its workers) spend.

    ``other_cores()`` is the average number of cores that other programs kept
    busy since the start: near 0 on an idle machine.
    """

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._machine = _machine_busy_seconds()
        self._own = _own_cpu_seconds()

    def other_cores(self) -> float | None:
        machine = _machine_busy_seconds()
        if machine is None or self._machine is None:
            return None
        elapsed = time.perf_counter() - self._started
        other = (machine - self._machine) - (_own_cpu_seconds() - self._own)
        return round(max(0.0, other) / max(elapsed, 1e-9), 2)


def _machine_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    ticks = [int(value) for value in fields[:8]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(value, 2) for value in os.getloadavg()]


def peak_memory_mib() -> dict[str, float]:
    """Peak resident memory so far, MiB: this process, and its largest child."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024**2
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return {"process": round(own, 1), "largest_worker": round(child, 1)}


def machine_facts(encoder) -> dict[str, Any]:
    """What the figures were measured on."""
    import faiss
    import torch

    from harrison_knn.index import gpu_available

    facts = {
        "cpu": _cpu_model(),
        "usable_cores": threads.usable_cores(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
        "faiss_gpu": gpu_available(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "device": str(encoder.device),
    }
    if encoder.device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(encoder.device)
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def photo_list(data_dir: str, count: int | None) -> tuple[Any, list[Path]]:
    """The collection and the paths of its first ``count`` photos (all if None)."""
    from harrison_knn.dataset import read_collection

    collection = read_collection(data_dir)
    count = len(collection) if count is None else min(count, len(collection))
    return collection, [collection.photo_path(i) for i in range(count)]


def warm_up(paths: Sequence[Path], encoder, batch_size: int) -> None:
    """Read every photo file once and run the network on one batch."""
    for path in paths:
        path.read_bytes()
    tensors, _ = decode_in_memory(paths[:batch_size], encoder)
    encoder.encode_batch(tensors)


def decode_in_memory(paths: Sequence[Path], encoder) -> tuple[Any, float]:
    """Every photo decoded and preprocessed here, on one thread.

    Returns:
        ``(tensors, photos_per_second)``: ``(n, 3, H, W) float32`` and the rate.
    """
    import torch

    from harrison_knn.images import load_photo

    started = time.perf_counter()
    with threads.torch_threads(1):
        tensors = torch.stack([encoder.preprocess(load_photo(p)) for p in paths])
    return tensors, len(paths) / (time.perf_counter() - started)


def time_encoder(
    encoder, tensors, batch_size: int, *, repeat: int = 1, min_seconds: float = 0
) -> float:
    """Photos per second of ``encoder.encode_batch`` on tensors in memory.

    One batch is run first to warm up. The timed run covers the tensors
    ``repeat`` times, and more passes while under ``min_seconds``.
    """
    batches = [
        tensors[start : start + batch_size]
        for start in range(0, len(tensors), batch_size)
    ]
    if encoder.device.type == "cuda":
        batches = [batch.pin_memory() for batch in batches]
    encoder.encode_batch(batches[0])

    done = 0
    passes = 0
    started = time.perf_counter()
    while passes < repeat or time.perf_counter() - started < min_seconds:
        for batch in batches:
            encoder.encode_batch(batch)
            done += len(batch)
        passes += 1
    # encode_batch returns arrays on the CPU, so the GPU has finished here.
    return done / (time.perf_counter() - started)


def time_build(
    paths: Sequence[Path],
    encoder,
    batch_size: int,
    workers: int | None,
    *,
    repeat: int = 1,
) -> tuple[float, Any]:
    """Photos per second of ``embed_photos`` from the files into a fresh store.

    Returns:
        ``(photos_per_second, result)`` of the first copy of the photo list.
    """
    from harrison_knn.embedding import EmbeddingStore, embed_photos

    sources = list(paths) * repeat
    keys = [f"{copy}/{path}" for copy in range(repeat) for path in paths]
    with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
        store = EmbeddingStore(folder, encoder=encoder.name, width=encoder.width)
        started = time.perf_counter()
        result = embed_photos(
            sources,
            encoder,
            keys=keys,
            store=store,
            batch_size=batch_size,
            num_workers=workers,
        )
        seconds = time.perf_counter() - started
    if result.failures:
        first = next(iter(result.failures.items()))
        print(f"warning: {len(result.failures)} photos skipped, e.g. {first}")
    return len(sources) / seconds, result


def load_suggester(collection, paths, vectors, encoder, folder: Path):
    """Index the embedded photos, save the index and load it back."""
    from harrison_knn.index import TagIndex
    from harrison_knn.suggester import TagSuggester

    count = len(paths)
    index = TagIndex.from_embeddings(
        vectors[:count],
        collection.label_matrix()[:count],
        vocabulary=collection.vocabulary,
        paths=collection.paths[:count],
        encoder=encoder.name,
        data_root=collection.root.resolve(),
    )
    index.save(folder)
    started = time.perf_counter()
    suggester = TagSuggester.load(folder, encoder=encoder)
    return suggester, time.perf_counter() - started


def time_single_queries(suggester, paths: Sequence[Path], count: int) -> dict:
    """Latency of ``suggest`` on one photo file at a time, milliseconds."""
    suggester.suggest(paths[-1])
    latencies = []
    for position in range(count):
        started = time.perf_counter()
        suggester.suggest(paths[position % len(paths)])
        latencies.append(1000 * (time.perf_counter() - started))
    latencies.sort()
    return {
        "queries": count,
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(latencies[min(count - 1, round(0.95 * (count - 1)))], 1),
        "max_ms": round(latencies[-1], 1),
    }


def time_batch_queries(suggester, paths, vectors, batch_size: int) -> dict:
    """Suggestions per second for many photos: from files, and from embeddings."""
    started = time.perf_counter()
    answers = suggester.suggest_many(list(paths), batch_size=batch_size)
    from_files = len(paths) / (time.perf_counter() - started)
    failed = sum(answer.error is not None for answer in answers)

    started = time.perf_counter()
    suggester.suggest_embeddings(vectors[: len(paths)])
    from_embeddings = len(paths) / (time.perf_counter() - started)
    return {
        "photos": len(paths),
        "failed": failed,
        "from_files_per_s": round(from_files, 1),
        "from_embeddings_per_s": round(from_embeddings, 1),
    }


def summarise_rounds(builds: list[float], encoder_only: list[float]) -> dict:
    """Medians of paired build and encoder-only rates, and of their ratios."""
    ratios = [build / alone for build, alone in zip(builds, encoder_only)]
    return {
        "encoder_only_per_s": round(statistics.median(encoder_only), 2),
        "build_per_s": round(statistics.median(builds), 2),
        "ratio": round(statistics.median(ratios), 3),
        "rounds": [
            {"build_per_s": round(build, 2), "encoder_only_per_s": round(alone, 2)}
            for build, alone in zip(builds, encoder_only)
        ],
    }


def sweep_batch_sizes(
    paths, tensors, encoder, sizes, workers, *, rounds: int = 1, repeat: int = 1
) -> list[dict]:
    """Build and encoder-only rates at each batch size, on the same photos."""
    rows = []
    for size in sizes:
        builds, encoder_only = [], []
        for _ in range(rounds):
            builds.append(time_build(paths, encoder, size, workers, repeat=repeat)[0])
            encoder_only.append(time_encoder(encoder, tensors, size, repeat=repeat))
        rows.append({"batch_size": size, **summarise_rounds(builds, encoder_only)})
    return rows


def run(
    args: argparse.Namespace,
    *,
    encoder=None,
    min_encoder_seconds: float = 0,
    around_build: Callable[[], AbstractContextManager] = nullcontext,
) -> dict:
    """All measurements of one run; see the module notes for the steps.

    Args:
        args: the options of :func:`build_parser`.
        encoder: the encoder to measure; made from ``args`` when None.
        min_encoder_seconds: time the encoder alone for at least this long.
        around_build: a context manager entered around the timed build.
    """
    import logging

    from harrison_knn.embedding import default_batch_size, default_workers
    from harrison_knn.encoders import create_encoder

    logging.basicConfig(level=logging.WARNING)
    machine_load = MachineLoad()
    load_before = load_average()
    collection, paths = photo_list(args.data_dir, args.photos)
    if encoder is None:
        encoder = create_encoder(args.encoder, device=args.device)
    workers = (
        args.workers if args.workers is not None else default_workers(encoder.device)
    )

    batch_size = args.batch_size or default_batch_size(encoder.device)

    # The build runs first, so that the peak memory after it is what a build
    # needs; the photo files are read once before, and the network has run
    # once, so that neither disk reads nor first-call set-up count in any rate.
    # Builds and encoder-only runs alternate, and the medians are kept, so
    # that a slow spell of the machine does not decide the ratio.
    warm_up(paths, encoder, batch_size)
    builds, encoder_only = [], []
    for round_number in range(args.rounds):
        with around_build():
            build_rate, result = time_build(
                paths, encoder, batch_size, workers, repeat=args.repeat
            )
        builds.append(build_rate)
        if round_number == 0:
            memory_after_build = peak_memory_mib()
            tensors, decode_rate = decode_in_memory(paths, encoder)
        encoder_only.append(
            time_encoder(
                encoder,
                tensors,
                batch_size,
                repeat=args.repeat,
                min_seconds=min_encoder_seconds,
            )
        )
    throughput = summarise_rounds(builds, encoder_only)

    with tempfile.TemporaryDirectory(prefix="bench-index-") as folder:
        suggester, load_seconds = load_suggester(
            collection, paths, result.vectors, encoder, Path(folder)
        )
        single = time_single_queries(suggester, paths, args.queries)
        batch = time_batch_queries(suggester, paths, result.vectors, batch_size)
    sweep = sweep_batch_sizes(
        paths,
        tensors,
        encoder,
        args.sweep_batch_sizes,
        workers,
        rounds=args.rounds,
        repeat=args.repeat,
    )

    return {
        "data_dir": str(Path(args.data_dir).resolve()),
        "photos": len(paths),
        "repeat": args.repeat,
        "encoder": encoder.name,
        "batch_size": batch_size,
        "workers": workers,
        "machine": machine_facts(encoder),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "other_programs_cores": machine_load.other_cores(),
        "decode_one_thread_per_s": round(decode_rate, 2),
        "encoder_only_per_s": throughput["encoder_only_per_s"],
        "build_per_s": throughput["build_per_s"],
        "build_to_encoder_ratio": throughput["ratio"],
        "rounds": throughput["rounds"],
        "index_load_s": round(load_seconds, 2),
        "single_photo_latency": single,
        "batch_suggestions": batch,
        "peak_memory_mib": {
            "after_build": memory_after_build,
            "end": peak_memory_mib(),
        },
        "sweep": sweep,
    }


def print_report(report: dict) -> None:
    """The figures, readable, on standard output."""
    machine = report["machine"]
    single = report["single_photo_latency"]
    batch = report["batch_suggestions"]
    peaks = report["peak_memory_mib"]
    setting = [
        ("photos", f"{report['photos']} x {report['repeat']}"),
        ("from", report["data_dir"]),
        ("encoder", f"{report['encoder']} on {machine['device']}"),
        ("batch size", report["batch_size"]),
        ("decoding workers", report["workers"]),
        ("cpu", f"{machine['cpu']}, {machine['usable_cores']} usable cores"),
        ("torch", f"{machine['torch']}, {machine['torch_threads']} threads"),
        ("faiss", f"{machine['faiss']}, GPU support: {machine['faiss_gpu']}"),
        ("OMP_WAIT_POLICY", machine["omp_wait_policy"]),
        (
            "load before, after",
            f"{report['load_average_before']}, {report['load_average_after']}",
        ),
        ("other programs", f"{report['other_programs_cores']} cores on average"),
    ]
    if "gpu" in machine:
        setting.insert(3, ("gpu", machine["gpu"]))
    figures = [
        ("decoding, one thread", f"{report['decode_one_thread_per_s']:.1f} photos/s"),
        ("encoder only (in memory)", f"{report['encoder_only_per_s']:.1f} photos/s"),
        ("end-to-end build (files)", f"{report['build_per_s']:.1f} photos/s"),
        ("build / encoder only", f"{report['build_to_encoder_ratio']:.3f}"),
        ("rounds (build, encoder only)", _rounds(report["rounds"])),
        ("index load", f"{report['index_load_s']:.2f} s"),
        ("single-photo suggest p50", f"{single['p50_ms']:.1f} ms"),
        ("single-photo suggest p95", f"{single['p95_ms']:.1f} ms"),
        ("single-photo suggest max", f"{single['max_ms']:.1f} ms"),
        ("batch suggest, files", f"{batch['from_files_per_s']:.1f} photos/s"),
        ("batch suggest, embeddings", f"{batch['from_embeddings_per_s']:.1f} /s"),
        ("peak memory after the build", _memory(peaks["after_build"])),
        ("peak memory at the end", _memory(peaks["end"])),
    ]
    figures += [(key, value) for key, value in report.get("extra", {}).items()]
    lines = [f"{label:<28} {value}" for label, value in setting]
    lines.append("")
    lines += [f"{label:<28} {value}" for label, value in figures]
    if report["sweep"]:
        lines += ["", "batch size  encoder only  build  ratio  rounds"]
        lines += [
            f"{row['batch_size']:10d}  {row['encoder_only_per_s']:12.1f}  "
            f"{row['build_per_s']:5.1f}  {row['ratio']:.3f}  {_rounds(row['rounds'])}"
            for row in report["sweep"]
        ]
    print("\n".join(lines))


def _rounds(rounds: list[dict]) -> str:
    return ", ".join(
        f"{r['build_per_s']:.1f}/{r['encoder_only_per_s']:.1f}" for r in rounds
    )


def _memory(peak: dict[str, float]) -> str:
    return (
        f"{peak['process']:.0f} MiB this process, "
        f"{peak['largest_worker']:.0f} MiB largest worker"
    )


def write_json(report: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    threads.prefer_sleeping_threads()
    parser = build_parser()
    args = check_arguments(parser, parser.parse_args(argv))
    report = run(args)
    print_report(report)
    write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
