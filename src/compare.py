"""Compare runs: a sweep's jobs, or an experiment's last N runs or all of them; a table and a PNG chart.

python src/compare.py                        # the latest sweep
python src/compare.py 2026-11-25_15-12-22    # a sweep by its id (the tag sweep_id)
python src/compare.py --last 5               # the last 5 runs of the experiment, whatever ran them
python src/compare.py --experiment augment-compare --all     # every run of an experiment
python src/compare.py --tracking-uri http://127.0.0.1:5000 --out /tmp/reports
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loaderlab.report import DEFAULT_EXPERIMENT, DEFAULT_OUT, DEFAULT_TRACKING_URI, ReportError, make_report

LATEST = "latest"
USAGE_ERROR = 2  # as argparse's own


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: a sweep id, or --last N / --all; the store, the experiment and the output folder."""
    parser = argparse.ArgumentParser(
        description="Table and chart of one sweep's jobs, or of an experiment's last N runs (--last) or all "
        "its runs (--all), read from MLflow. A sweep's chart is also logged on its parent run; other runs "
        "have no parent, and their chart is written to --out only."
    )
    parser.add_argument(
        "sweep_id", nargs="?", help=f"the sweep to compare (default: the latest one; '{LATEST}' says so)"
    )
    parser.add_argument(
        "--last", type=int, metavar="N", help="the experiment's last N runs instead of a sweep"
    )
    parser.add_argument("--all", action="store_true", help="all the experiment's runs instead of a sweep")
    parser.add_argument(
        "--tracking-uri", default=DEFAULT_TRACKING_URI, help="MLflow store (default: %(default)s)"
    )
    parser.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (default: %(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where the PNG goes (default: %(default)s)"
    )
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments together, in words; None when nothing is."""
    if args.last is not None and args.last < 1:
        return (
            "--last takes how many of the experiment's newest runs to compare, 1 or more. "
            f"Received: last={args.last}"
        )
    if args.sweep_id is not None and (args.last is not None or args.all):
        return (
            "Compare a sweep, or runs (--last N, --all), not both: drop the sweep id, or --last and --all. "
            f"Received: sweep_id={args.sweep_id!r}, last={args.last}, all={args.all}"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    """Print the table, write (and for a sweep, log) the chart; 1 with a message when there is nothing to
    compare, 2 for arguments that do not go together."""
    args = parse_args(argv)
    if problem := check_args(args):
        print(f"compare: {problem}", file=sys.stderr)
        return USAGE_ERROR
    sweep_id = None if args.sweep_id == LATEST else args.sweep_id
    try:
        report = make_report(
            args.tracking_uri, args.experiment, sweep_id, args.out, last=args.last, all_runs=args.all
        )
    except ReportError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 1
    print(report.render(args.tracking_uri))
    return 0


if __name__ == "__main__":
    sys.exit(main())
