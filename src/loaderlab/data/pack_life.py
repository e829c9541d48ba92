"""A pack's life after it is written: what is under a root, whether its shards are intact, and
cleaning up what no job uses. `python src/packs.py` is the command line."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from loaderlab.data.pack import META, PACK_FORMAT
from loaderlab.data.pack_cache import drop_cached
from loaderlab.data.pack_root import PackRoot, file_sha256, live

_FINGERPRINT = re.compile(r"^[0-9a-f]{24}$")
_LEFTOVER = re.compile(r"^\.[0-9a-f]{24}\.tmp-[0-9a-f]+$")  # a temporary folder of the first pack format
DAY_S = 86400.0


@dataclass
class PackInfo:
    """One pack, or one leftover, under a root."""

    name: str
    state: str  # complete | being written | incomplete | old format | leftover
    nbytes: int
    held: bool  # a running job reads or writes it
    meta: dict

    def age_days(self, key: str) -> float | None:
        """Days since pack.json's `created` or `last_used`; None when it has none."""
        stamp = self.meta.get(key)
        return (time.time() - datetime.fromisoformat(stamp).timestamp()) / DAY_S if stamp else None


def survey(place: PackRoot) -> list[PackInfo]:
    """Every pack and leftover under the root, with its size and whether a job holds it."""
    names = place.entries()
    found = []
    for name in names:
        if _LEFTOVER.match(name):
            found.append(PackInfo(name, "leftover", _size(place, name), False, {}))
        elif _FINGERPRINT.match(name):
            meta = place.read_json(place.path(name, META)) or {}
            held = _held(place, name)
            if meta.get("format") == PACK_FORMAT and "shards" in meta:
                state = "complete"
            elif meta:
                state = "old format"
            else:
                state = "being written" if held else "incomplete"
            found.append(PackInfo(name, state, _size(place, name), held, meta))
    return found


def verify(place: PackRoot, info: PackInfo) -> list[str]:
    """What is wrong with a complete pack's shards (missing, resized, another checksum); [] if nothing."""
    problems = []
    sizes = place.sizes(place.path(info.name))
    for shard in info.meta["shards"]:
        name, size = shard["name"], sizes.get(shard["name"])
        if size is None:
            problems.append(f"{name} is missing")
        elif size != shard["bytes"]:
            problems.append(f"{name} holds {size} bytes, {shard['bytes']} recorded")
        elif file_sha256(place.path(info.name, name), place.fs) != shard["sha256"]:
            problems.append(f"{name} does not match its checksum")
    return problems


def clean(place: PackRoot, unused_days: float | None) -> tuple[list[PackInfo], list[PackInfo], int]:
    """Delete packs unused for `unused_days` (None: every pack), unfinished packs and leftovers, but
    never one a running job holds; (deleted, kept because held, bytes freed)."""
    deleted, kept, freed = [], [], 0
    for info in survey(place):
        if info.state == "complete" and unused_days is not None:
            idle = info.age_days("last_used")
            if idle is not None and idle < unused_days:
                continue
        with _exclusive(place, info.name) as free:
            # Locally the lock just taken says it; a store's pack is held by a live lease.
            if not free or (place.remote and info.state != "leftover" and _held(place, info.name)):
                kept.append(info)
                continue
            freed += place.remove(place.path(info.name))
            if info.state != "leftover":
                for side in (f"{info.name}.claims", f"{info.name}.uses"):
                    place.remove(place.path(side))
                freed += drop_cached(place.url, info.name)
            deleted.append(info)
    return deleted, kept, freed


def _size(place: PackRoot, name: str) -> int:
    try:
        return int(place.fs.du(place.path(name), total=True))
    except FileNotFoundError:
        return 0


def _held(place: PackRoot, name: str) -> bool:
    if not place.remote:
        with _exclusive(place, name) as free:
            return not free
    return bool(live(place, place.path(f"{name}.uses")) or live(place, place.path(f"{name}.claims")))


@contextlib.contextmanager
def _exclusive(place: PackRoot, name: str) -> Iterator[bool]:
    """Within: True when no job holds the pack (locally, it stays so until the block ends)."""
    if place.remote or not _FINGERPRINT.match(name):
        yield True
        return
    fd = place.open_lock(name)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
