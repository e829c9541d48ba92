"""Deliver what runs could not send to a tracking server that was away when they ended.

python src/deliver.py                      # every run folder under outputs/
python src/deliver.py outputs/runs/2026-12-01/10-00-00
"""

import argparse
import logging
import sys
from pathlib import Path

import loaderlab  # noqa: F401  registers the ${project_root:} resolver
from loaderlab.run_log import JOURNAL_GLOB, deliver_journal
from loaderlab.utils.paths import OUTPUTS


def main(argv: list[str] | None = None) -> int:
    """Deliver every journal found under the given folders; exit 1 if anything is left."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="*", type=Path, default=[OUTPUTS], help="default: outputs/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    journals = sorted({j for folder in args.folders for j in Path(folder).rglob(JOURNAL_GLOB)})
    if not journals:
        print("Nothing to deliver.")
        return 0
    left_total = 0
    for journal in journals:
        left = deliver_journal(journal)
        left_total += left
        print(f"{journal}: " + ("delivered" if not left else f"{left} record(s) left; is the server up?"))
    return 1 if left_total else 0


if __name__ == "__main__":
    sys.exit(main())
