"""The ``harrison-knn`` command line: build, suggest, evaluate, benchmark."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from collections.abc import Sequence

from tqdm import tqdm

from . import __version__, threads, voting

logger = logging.getLogger("harrison_knn")

EXIT_USER_ERROR = 2

LOGGING_FLAGS = frozenset({"-q", "--quiet", "-v", "--verbose"})
"""Options of every command that may also come before its name."""


def _fraction_or_count(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction such as 0.2 or a count such as 5000, got {text!r}"
        ) from None
    if value < 0 or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(
            f"expected a fraction in [0, 1) or a whole count, got {text!r}"
        )
    return int(value) if value >= 1 else value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a number of at least 1, got {value}"
        )
    return value


def _add_voting_options(parser: argparse.ArgumentParser, default_note: str) -> None:
    parser.add_argument(
        "--k",
        type=_positive_int,
        default=None,
        help=f"neighbours that vote (default: {default_note})",
    )
    parser.add_argument(
        "--weighting",
        choices=voting.WEIGHTINGS,
        default=None,
        help=f"how a neighbour's similarity weighs its vote (default: {default_note})",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"softmax temperature of the weighting (default: {default_note})",
    )
    parser.add_argument(
        "--ridge",
        type=float,
        default=None,
        help=(
            "regularisation of the 'reconstruction' weighting, > 0 "
            f"(default: {default_note})"
        ),
    )
    parser.add_argument(
        "--popularity-correction",
        type=float,
        default=None,
        metavar="ALPHA",
        help=(
            "subtract ALPHA times a hashtag's share of all indexed photos from its "
            f"score, in [0, 1] (default: {default_note})"
        ),
    )
    parser.add_argument(
        "--diversity",
        type=float,
        default=None,
        metavar="D",
        help=(
            "rank hashtags so that the first places cover different neighbours: "
            "once a hashtag is placed, the neighbours carrying it vote with 1 - D "
            f"of their weight for the places below; in [0, 1) (default: {default_note})"
        ),
    )


def _threshold(text: str) -> str | float:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or a score such as 0.2, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    from .encoders import DEFAULT_ENCODER, available_encoders

    parser = argparse.ArgumentParser(
        prog="harrison-knn",
        description="Hashtag suggestions for photos by nearest-neighbour voting.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debugging detail"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser(
        "build",
        help="embed a HARRISON-layout photo folder and save its index",
        description=(
            "Embed every photo listed in DATA_DIR/data_list.txt and save a FAISS "
            "index with the photos' hashtags. An interrupted build resumes."
        ),
    )
    build.add_argument("data_dir", metavar="DATA_DIR")
    build.add_argument("--index", required=True, help="index folder, e.g. indexes/NAME")
    build.add_argument(
        "--encoder",
        default=DEFAULT_ENCODER,
        help=(
            "image encoder (default: %(default)s); one of: "
            + ", ".join(available_encoders())
        ),
    )
    build.add_argument(
        "--device", default=None, help="torch device (default: cuda if seen)"
    )
    build.add_argument(
        "--holdout",
        type=_fraction_or_count,
        default=0,
        help=(
            "photos kept out of the index for 'evaluate': a fraction or a count "
            "(default: 0, none)"
        ),
    )
    build.add_argument(
        "--seed", type=int, default=0, help="seed of the held-out split (default: 0)"
    )
    build.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="photos per forward pass (default: 8 on the CPU, 256 on a GPU)",
    )
    build.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=512,
        help=(
            "photos per file of the embedding cache, which an interrupted build "
            "resumes from; it loses the photos not yet in a file "
            "(default: %(default)s)"
        ),
    )
    build.add_argument(
        "--workers",
        type=int,
        default=None,
        help=(
            "decoding processes (default: one per core beyond the first, at least "
            "1 and at most 4 on the CPU, at most 16 on a GPU)"
        ),
    )
    build.add_argument(
        "--max-failures",
        type=float,
        default=0.1,
        help="fail when a larger share of photos cannot be read (default: %(default)s)",
    )
    build.add_argument(
        "--no-tune",
        dest="tune",
        action="store_false",
        help="keep the default voting settings instead of tuning them",
    )
    _add_voting_options(build, "tuned by cross-validation on the indexed photos")
    build.add_argument(
        "--projection-mix",
        type=float,
        default=None,
        metavar="MIX",
        help=(
            "search neighbours on the embedding joined with the hashtags a ridge "
            "regression predicts for it; MIX in (0, 1] is the embedding's share of "
            "the similarity, 1 the plain embedding (default: tuned by "
            "cross-validation on the indexed photos)"
        ),
    )
    build.add_argument(
        "--prototype-pull",
        type=float,
        default=None,
        metavar="PULL",
        help=(
            "store each indexed photo PULL of the way toward the typical vector of "
            "photos with its hashtags, in [0, 0.99]; 0 stores photos as they are "
            "(default: tuned by cross-validation on the indexed photos)"
        ),
    )

    suggest = commands.add_parser(
        "suggest",
        help="suggest hashtags for photos",
        description="Print the best hashtags of each photo, with their scores.",
    )
    suggest.add_argument("photos", nargs="+", metavar="PHOTO")
    suggest.add_argument("--index", required=True, help="index folder")
    suggest.add_argument(
        "--top", type=_positive_int, default=5, help="hashtags per photo (default: 5)"
    )
    suggest.add_argument(
        "--neighbours",
        type=int,
        default=0,
        metavar="N",
        help="also show the N nearest photos that voted",
    )
    suggest.add_argument(
        "--exclude-self",
        action="store_true",
        help="leave a photo that is itself indexed out of its own neighbours",
    )
    suggest.add_argument(
        "--threshold",
        type=_threshold,
        default=None,
        help=(
            "variable-length answer: also drop hashtags scoring below this; "
            "'auto' uses the threshold calibrated by the build (at most --top "
            "hashtags, at least one)"
        ),
    )
    suggest.add_argument("--json", action="store_true", help="print JSON")
    suggest.add_argument("--device", default=None)
    _add_voting_options(suggest, "the value saved with the index")

    evaluate = commands.add_parser(
        "evaluate",
        help="score an index on the photos its build held out",
        description="Suggest hashtags for the held-out photos and print the metrics.",
    )
    evaluate.add_argument("--index", required=True, help="index folder")
    evaluate.add_argument(
        "--examples", type=int, default=5, help="held-out photos to show (default: 5)"
    )
    evaluate.add_argument(
        "--json", action="store_true", help="print the metrics as JSON"
    )
    evaluate.add_argument("--device", default=None)
    _add_voting_options(evaluate, "the value saved with the index")

    commands.add_parser(
        "benchmark",
        help="compare voting with linear heads (see 'harrison-knn benchmark -h')",
        add_help=False,
    )
    return parser


def _voting_overrides(args: argparse.Namespace) -> dict:
    names = (
        "k",
        "weighting",
        "temperature",
        "popularity_correction",
        "ridge",
        "projection_mix",
        "prototype_pull",
        "diversity",
    )
    return {
        name: getattr(args, name)
        for name in names
        if getattr(args, name, None) is not None
    }


def _run_build(args: argparse.Namespace) -> int:
    from .build import MIN_PHOTOS_TO_TUNE, build_index

    # Opened at the first photo, after the log lines that name the work.
    bar = tqdm(total=0, unit="photo", desc="embedding", disable=True)

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if bar.total == 0 and not args.quiet:
            bar = tqdm(total=total, unit="photo", desc="embedding")
        bar.total = total
        bar.n = done
        bar.refresh()
        # Tuning and saving log lines of their own once the last photo is in.
        if done == total:
            bar.close()

    try:
        report = build_index(
            args.data_dir,
            args.index,
            encoder=args.encoder,
            device=args.device,
            holdout=args.holdout,
            seed=args.seed,
            batch_size=args.batch_size,
            num_workers=args.workers,
            chunk_size=args.chunk_size,
            max_failure_share=args.max_failures,
            voting_settings=_voting_overrides(args),
            tune=args.tune,
            on_progress=on_progress,
        )
    finally:
        bar.close()
    print(
        f"indexed {report.photos_indexed} photos with {report.encoder} "
        f"into {args.index} "
        f"({report.photos_held_out} held out, {report.photos_skipped} skipped) "
        f"in {report.seconds_total:.1f} s"
    )
    chosen = report.voting
    given = _voting_overrides(args)
    if chosen.get("tuned"):
        how = "tuned by cross-validation" + (", options kept" if given else "")
    else:
        how = "options given, defaults for the rest" if given else "defaults"
        if args.tune:
            how += (
                f"; not tuned: {report.photos_indexed} photos indexed, tuning "
                f"needs {MIN_PHOTOS_TO_TUNE}"
            )
    # Only the parameter the weighting uses: a temperature means nothing to
    # count, rank or similarity votes.
    parameter = {
        "softmax": f"temperature={chosen['temperature']} ",
        "reconstruction": f"ridge={chosen['ridge']} ",
    }.get(chosen["weighting"], "")
    threshold = chosen.get("threshold")
    print(
        f"voting ({how}): k={chosen['k']} weighting={chosen['weighting']} "
        + parameter
        + f"popularity correction={chosen['popularity_correction']} "
        # Indexes built before diversity existed have none in their settings.
        f"diversity={chosen.get('diversity', 0.0)} "
        f"search space={_space_name(chosen)}"
        + (f" threshold={threshold:.3f}" if threshold is not None else "")
    )
    return 0


def _space_name(chosen: dict) -> str:
    """The search space of saved voting settings, in words."""
    mix = chosen["projection_mix"]
    name = "embeddings"
    if mix < 1.0:
        name = f"embeddings {mix:g} + predicted hashtags {1 - mix:g}"
    # Indexes built before prototypes existed have no pull in their settings.
    pull = chosen.get("prototype_pull", 0.0)
    if pull > 0.0:
        name += f", indexed photos pulled {pull:g} toward their hashtags"
    return name


def _print_suggestion(suggestion, neighbours: int) -> None:
    print(suggestion.photo)
    if suggestion.error:
        print(f"  error: {suggestion.error}")
        return
    if not suggestion.tags:
        print("  (no hashtag got a vote)")
    for tag in suggestion.tags:
        print(f"  #{tag.tag:<20} {tag.score:.3f}")
    for neighbour in suggestion.neighbours[:neighbours]:
        tags = " ".join(f"#{t}" for t in neighbour.tags)
        print(f"    {neighbour.similarity:.3f}  {neighbour.path}  {tags}")


def _run_suggest(args: argparse.Namespace) -> int:
    from .suggester import TagSuggester

    loading = time.perf_counter()
    suggester = TagSuggester.load(
        args.index, device=args.device, **_voting_overrides(args)
    )
    loaded = time.perf_counter()
    suggestions = suggester.suggest_many(
        args.photos,
        args.top,
        exclude_self=args.exclude_self,
        threshold=args.threshold,
    )
    query_seconds = time.perf_counter() - loaded

    if args.json:
        print(json.dumps([s.to_dict() for s in suggestions], indent=1))
    else:
        for suggestion in suggestions:
            _print_suggestion(suggestion, args.neighbours)
        print(
            f"{len(suggestions)} photo(s) in {query_seconds * 1000:.0f} ms once the "
            f"index was loaded (loading took {loaded - loading:.1f} s)",
            file=sys.stderr,
        )
    return 1 if all(s.error for s in suggestions) else 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_holdout
    from .suggester import TagSuggester

    suggester = TagSuggester.load(
        args.index, device=args.device, **_voting_overrides(args)
    )
    result = evaluate_holdout(args.index, suggester=suggester)
    if args.json:
        print(
            json.dumps(
                {"voting": result.metrics, "popularity": result.popularity_metrics},
                indent=1,
            )
        )
        return 0
    for suggestion, truth in list(zip(result.suggestions, result.true_tags))[
        : args.examples
    ]:
        print(suggestion.photo)
        print("  true:      " + " ".join(f"#{t}" for t in truth))
        print(
            "  suggested: "
            + " ".join(f"#{t.tag}({t.score:.2f})" for t in suggestion.tags)
        )
    print(f"\n{len(result.suggestions)} held-out photos:")
    for name, metrics in (
        ("neighbour voting", result.metrics),
        ("popularity (always the most frequent hashtags)", result.popularity_metrics),
    ):
        print(
            f"  Precision@1 {100 * metrics['P@1']:5.1f}%  "
            f"Recall@5 {100 * metrics['R@5']:5.1f}%  "
            f"Accuracy@5 {100 * metrics['A@5']:5.1f}%  {name}"
        )
    return 0


def configure_logging(*, verbose: bool, quiet: bool) -> None:
    """Log to stderr: debugging detail, warnings only, or progress (the default)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # faiss reports at INFO which CPU build it loaded; users need not see that.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    # Before torch and faiss load: idle OpenMP threads then sleep instead of
    # spinning, so that a query on a busy machine does not wait seconds for
    # a core that a spinning thread holds (see harrison_knn.threads).
    threads.prefer_sleeping_threads()
    argv = list(sys.argv[1:] if argv is None else argv)
    # benchmark has its own parser; -q and -v given before it are handed on.
    flags = list(itertools.takewhile(LOGGING_FLAGS.__contains__, argv))
    if argv[len(flags) : len(flags) + 1] == ["benchmark"]:
        from .benchmark import main as benchmark_main

        return benchmark_main(flags + argv[len(flags) + 1 :])
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose, quiet=args.quiet)
    runners = {"build": _run_build, "suggest": _run_suggest, "evaluate": _run_evaluate}
    from .build import BuildError
    from .dataset import AnnotationError
    from .images import PhotoError
    from .index import IndexFormatError

    try:
        return runners[args.command](args)
    except (AnnotationError, PhotoError, IndexFormatError, BuildError) as error:
        print(f"harrison-knn {args.command}: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (FileNotFoundError, ValueError) as error:
        print(f"harrison-knn {args.command}: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(
            "interrupted; run the same command again to resume where it stopped",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
