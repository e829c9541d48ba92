"""The loader benchmark: each input pipeline alone, no model, against this machine's decode limit.

python src/benchmark.py                                   # 2,000 synthetic JPEGs, 256 -> 224 px
python src/benchmark.py --root /data/photos               # your own class folders, only read
python src/benchmark.py --entries tfdata "tfdata loader.autotune=false" sequence --rounds 5
python src/benchmark.py --augment rrc --entries tfdata packed "tfdata augment=none" "tfdata augment=layers"
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from loaderlab.benchmark import EXPERIMENT, BenchmarkConfig, default_entries, run_benchmark
from loaderlab.data.manifest import DatasetError


def parse_args(argv: Sequence[str] | None = None) -> BenchmarkConfig:
    """The command line, as a BenchmarkConfig."""
    defaults = BenchmarkConfig()
    parser = argparse.ArgumentParser(
        prog="python src/benchmark.py",
        description="Each loader's input pipeline alone, no model, against this machine's decode limit. "
        f"Every entry runs in a fresh process; results go to the MLflow experiment '{EXPERIMENT}'.",
    )
    parser.add_argument("--root", default=None, help="your dataset (root/<class>/*.jpg), only read; "
                        "default: a synthetic set generated under outputs/datasets/")  # fmt: skip
    parser.add_argument("--num-images", type=int, default=defaults.num_images, help="synthetic set only")
    parser.add_argument(
        "--image-size", type=int, default=defaults.image_size, help="px on disk, synthetic only"
    )
    parser.add_argument("--input-size", type=int, default=defaults.input_size, help="px after resize")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--passes", type=int, default=defaults.passes, help="timed passes after one warm-up")
    parser.add_argument(
        "--rounds",
        type=int,
        default=defaults.rounds,
        help="every entry once per round, in a fresh process, the limit measured each round; "
        "each entry's median ratio to its round's limit is reported, with its range (default: %(default)s)",
    )
    parser.add_argument(
        "--entries",
        nargs="+",
        default=None,
        help="entries to run; a loader may carry overrides in one quoted argument, e.g. "
        "'tfdata loader.autotune=false'; names alone may also be comma-separated. "
        f"Default: {', '.join(default_entries())}",
    )
    parser.add_argument(
        "--augment",
        default=defaults.augment,
        choices=["none", "flip", "rrc", "layers"],
        help="the training augment of the limit and of every entry that sets none ('tfdata augment=layers'): "
        "flip and rrc are drawn at the decode, layers are Keras layers on each batch",
    )
    parser.add_argument("--tracking-uri", default=defaults.tracking_uri, help="default: %(default)s")
    parser.add_argument("--out", default=None, help="results JSON; default outputs/benchmarks/<id>.json")
    args = parser.parse_args(argv)
    for name in ("passes", "rounds", "batch_size", "input_size", "num_images", "image_size"):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be a positive integer. Received: {getattr(args, name)}"
            )
    entries = None
    if args.entries:
        entries = [e for arg in args.entries for e in (arg.split(",") if " " not in arg else [arg]) if e]
    return BenchmarkConfig(
        num_images=args.num_images,
        image_size=args.image_size,
        input_size=args.input_size,
        batch_size=args.batch_size,
        passes=args.passes,
        rounds=args.rounds,
        augment=args.augment,
        entries=entries,
        root=args.root,
        tracking_uri=args.tracking_uri,
        out=args.out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table and where the results went; 1 if an entry failed or the input is wrong."""
    cfg = parse_args(argv)
    try:
        report = run_benchmark(cfg)
    except (DatasetError, ValueError) as e:
        print(f"benchmark: {e}", file=sys.stderr)
        return 1
    data = report.dataset.describe()
    sizes = (
        f"sizes {data['image_size_median']} median, {data['image_size_min']} to {data['image_size_max']}"
        f" (of {data['image_sizes_sampled']} sampled)"
        if "image_size_median" in data
        else "sizes unknown"
    )
    kind = "synthetic" if report.dataset.synthetic else "your folder"
    print(
        f"\nbenchmark_id={report.benchmark_id}: {data['num_images']} images in {report.dataset.root} "
        f"({kind}), {sizes} -> {cfg.input_size} px input, batch {cfg.batch_size}, {cfg.passes} timed "
        f"passes after a warm-up, {cfg.rounds} round(s): medians, and the range of the ratio\n"
        f"{report.table}\n\n"
        f"MLflow experiment '{EXPERIMENT}' (tag benchmark_id); results: {report.out}"
    )
    if report.failures:
        print(f"FAILED: {', '.join(report.failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
