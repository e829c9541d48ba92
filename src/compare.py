"""Compare the jobs of a sweep: a table of what each loader cost, and a PNG chart.

python src/compare.py                        # the latest sweep
python src/compare.py 2026-11-25_15-12-22    # a sweep by its id (the tag sweep_id)
python src/compare.py --tracking-uri http://127.0.0.1:5000 --out /tmp/reports
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loaderlab.report import DEFAULT_EXPERIMENT, DEFAULT_OUT, DEFAULT_TRACKING_URI, ReportError, make_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: an optional sweep id, the store, the experiment and the output folder."""
    parser = argparse.ArgumentParser(
        description="Table and chart of one sweep's jobs, read from MLflow; the chart is also logged "
        "on the sweep's parent run."
    )
    parser.add_argument("sweep_id", nargs="?", help="the sweep to compare (default: the latest one)")
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


def main(argv: list[str] | None = None) -> int:
    """Print the table, write and log the chart; 1 with a message when there is nothing to compare."""
    args = parse_args(argv)
    try:
        report = make_report(args.tracking_uri, args.experiment, args.sweep_id, args.out)
    except ReportError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 1
    print(report.render(args.tracking_uri))
    return 0


if __name__ == "__main__":
    sys.exit(main())
