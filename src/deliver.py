"""Deliver what runs could not send to a tracking server that was away when they ended.

python src/deliver.py                      # every run folder under outputs/
python src/deliver.py outputs/runs/2026-12-01/10-00-00

Each journal is reported and the next one tried, whatever happened to the last. A journal that a
job still training holds is left to that job. Records the server rejects (a param that conflicts,
a deleted run) are kept aside in the run folder's mlflow-rejected-<run id>.jsonl, with their error.
"""

import argparse
import logging
import sys
from pathlib import Path

import loaderlab  # noqa: F401  registers the ${project_root:} resolver
from loaderlab.delivery import deliver_journal
from loaderlab.journal import JOURNAL_GLOB, rejected_path
from loaderlab.utils.paths import OUTPUTS


def main(argv: list[str] | None = None) -> int:
    """Deliver every journal found under the given folders; exit 1 if any record is left or rejected."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="*", type=Path, default=[OUTPUTS], help="default: outputs/")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar (LOADERLAB_PROGRESS)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    journals = sorted({j for folder in args.folders for j in Path(folder).rglob(JOURNAL_GLOB)})
    if not journals:
        print("Nothing to deliver.")
        return 0
    unsettled = 0
    for journal in journals:
        try:
            left, rejected, stopped = deliver_journal(journal, progress=not args.quiet)
        except BlockingIOError:
            print(f"{journal}: skipped, a job that is still running holds it and delivers it itself.")
            continue
        except Exception as e:  # noqa: BLE001  reported; the next journal is still tried
            print(f"{journal}: not delivered ({type(e).__name__}: {e}).")
            unsettled += 1
            continue
        outcome = (
            "delivered" if not left else f"{left} record(s) left. {stopped} Run again when it takes them."
        )
        if rejected:
            outcome += f"; {rejected} record(s) rejected by the server, kept in {rejected_path(journal)}"
        print(f"{journal}: {outcome}")
        unsettled += bool(left or rejected)
    return 1 if unsettled else 0


if __name__ == "__main__":
    sys.exit(main())
