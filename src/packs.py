"""See, check and clean the packs under a root (`loader.root`: a folder or a store URL).

python src/packs.py list                              # every pack: source, size, age, last use
python src/packs.py verify                            # each shard's size and checksum
python src/packs.py clean --unused-days 30            # packs unused that long, and leftovers
python src/packs.py clean --all --root s3://team-bucket/packs

A pack a running job reads or writes is never deleted. A store's credentials come from the
environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...); --option passes other fsspec options.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from loaderlab.data.pack_life import PackInfo, clean, survey, verify
from loaderlab.data.pack_root import PackRoot
from loaderlab.data.storage import Storage, StoreError
from loaderlab.utils.paths import OUTPUTS
from loaderlab.utils.system import MB


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: an action, the root, and what clean may delete."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["list", "verify", "clean"])
    parser.add_argument("--root", default=str(OUTPUTS / "packed"), help="default: %(default)s")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="an fsspec option")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--unused-days", type=float, help="clean: packs not used for this many days")
    which.add_argument("--all", action="store_true", help="clean: every pack no running job holds")
    args = parser.parse_args(argv)
    if args.action == "clean" and args.unused_days is None and not args.all:
        parser.error("clean needs --unused-days N or --all")
    if args.unused_days is not None and args.unused_days < 0:
        parser.error(f"--unused-days must be 0 or more. Received: --unused-days={args.unused_days}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one action; exit 1 when verify finds a damaged pack or the root cannot be read."""
    args = parse_args(argv)
    options = dict(_option(o) for o in args.option)
    try:
        place = PackRoot(args.root, Storage(options))
        if args.action == "list":
            print(_table(survey(place)) or f"No packs under {args.root}.")
            return 0
        if args.action == "verify":
            return _verify(place)
        deleted, kept, freed = clean(place, None if args.all else args.unused_days)
    except StoreError as e:
        print(e, file=sys.stderr)
        return 1
    for info in deleted:
        print(f"deleted {info.name} ({info.state}, {info.nbytes / MB:.1f} MB)")
    for info in kept:
        print(f"kept    {info.name}: a running job holds it")
    print(f"Freed {freed / MB:.1f} MB under {args.root} and this machine's cache ({len(deleted)} deleted).")
    return 0


def _verify(place: PackRoot) -> int:
    damaged = 0
    for info in survey(place):
        if info.state != "complete":
            print(f"{info.name}: {info.state}, not checked")
            continue
        problems = verify(place, info)
        damaged += bool(problems)
        print(
            f"{info.name}: " + ("; ".join(problems) if problems else f"ok, {len(info.meta['shards'])} shards")
        )
    if damaged:
        print(
            f"{damaged} damaged: delete with python src/packs.py clean --all (a job rebuilds what it needs)."
        )
    return 1 if damaged else 0


def _table(packs: list[PackInfo]) -> str:
    if not packs:
        return ""
    head = f"{'pack':<24} {'state':<13} {'split':<5} {'records':>7} {'MB':>8} "
    head += f"{'age d':>6} {'used d':>6} held  source"
    rows = [head, "-" * len(head)]
    for p in packs:
        age, used = p.age_days("created"), p.age_days("last_used")
        rows.append(
            f"{p.name:<24} {p.state:<13} {p.meta.get('split', ''):<5} {p.meta.get('records', ''):>7} "
            f"{p.nbytes / MB:>8.1f} {_days(age):>6} {_days(used):>6} {'yes' if p.held else 'no':<5} "
            f"{p.meta.get('source', '')}"
        )
    return "\n".join(rows)


def _days(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--option takes KEY=VALUE. Received: --option={text}")
    return key, yaml.safe_load(value)


if __name__ == "__main__":
    sys.exit(main())
