"""Where packs live: a local folder or any fsspec URL, and who holds a pack there.

One pack is `<root>/<fingerprint>/`: shards, then `pack.json` last (its presence means complete).
Holding keeps two jobs from writing the same pack and `packs.py clean` from deleting one in use:

- a local root: a file lock per pack (`<root>/.locks/<fingerprint>.lock`), exclusive to write and
  shared to read; the kernel drops it when a process dies;
- a store: a claim object to write (`<fingerprint>.claims/<generation>`, created exclusively, so one
  job wins each generation) and a use object per reading job (`<fingerprint>.uses/<token>`), each with
  a lease its job renews; a lease that runs out (its job died) no longer holds the pack.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loaderlab.data.storage import Storage, StoreError, explain, is_url
from loaderlab.utils.paths import OUTPUTS

PACK_CACHE = OUTPUTS / "cache" / "packs"  # this machine's copies of packs in a store
LEASE_S = 120.0  # a claim or use object no longer holds its pack this long after its last renewal
LOCKS = ".locks"


class PackRoot:
    """A folder or store URL holding packs, with the few file operations packs need."""

    def __init__(self, root: str | Path, storage: Storage | None = None):
        self.url = str(root).rstrip("/") or "/"
        self.remote = is_url(self.url)
        self.storage = storage or Storage()
        if self.remote:
            self.fs = self.storage.filesystem(self.url)
        else:
            import fsspec

            self.fs = fsspec.filesystem("file")

    def path(self, *parts: str) -> str:
        """A path under the root."""
        return "/".join([self.url, *parts])

    def read_json(self, path: str) -> dict | None:
        """A small JSON object's value; None when it is missing or torn."""
        try:
            return json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return None
        except ValueError:
            return None
        except Exception as e:  # noqa: BLE001  every store raises its own kind
            raise StoreError(explain(path, e)) from None

    def write_json(self, path: str, value: Any, create_only: bool = False) -> bool:
        """Write a small JSON object whole; create_only: False if it already exists (one writer wins)."""
        data = json.dumps(value, indent=1).encode()
        if not self.remote:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            if create_only:
                try:
                    with open(target, "xb") as f:
                        f.write(data)
                    return True
                except FileExistsError:
                    return False
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)  # whole or not at all
            return True
        try:
            # An exclusive create is S3's If-None-Match: *; a plain PUT replaces the object whole.
            self.fs.pipe_file(path, data, **({"mode": "create"} if create_only else {}))
            return True
        except (FileExistsError, OSError) as e:
            if create_only and _already_exists(e):
                return False
            raise StoreError(explain(path, e)) from None

    def put(self, local: Path, path: str) -> None:
        """A finished local file to its place under the root (a rename when the root is local)."""
        if not self.remote:
            os.replace(local, path)
            return
        try:
            self.fs.put_file(str(local), path)
        except Exception as e:  # noqa: BLE001
            raise StoreError(explain(path, e)) from None

    def sizes(self, folder: str) -> dict[str, int]:
        """Each file directly in a folder by name, with its size; {} when there is none."""
        try:
            found = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:  # noqa: BLE001
            raise StoreError(explain(folder, e)) from None
        return {entry["name"].rstrip("/").rsplit("/", 1)[-1]: int(entry.get("size") or 0) for entry in found}

    def entries(self) -> list[str]:
        """The names directly under the root."""
        return sorted(name for name in self.sizes(self.url) if name != LOCKS)

    def remove(self, path: str) -> int:
        """Delete a file or folder and everything in it; the bytes freed."""
        try:
            freed = int(self.fs.du(path, total=True)) if self.fs.exists(path) else 0
            if freed or self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            return 0
        except Exception as e:  # noqa: BLE001
            raise StoreError(explain(path, e)) from None
        return freed

    def open_lock(self, fingerprint: str) -> int:
        """A descriptor of a local pack's lock file, to flock (the file is never deleted: a new one
        would not exclude holders of the old)."""
        path = Path(self.url) / LOCKS / f"{fingerprint}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _already_exists(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}"
    return isinstance(error, FileExistsError) or "PreconditionFailed" in text or "412" in text


class Lease:
    """An object that holds a pack while its job renews it: written, renewed by a thread, deleted on stop."""

    def __init__(self, root: PackRoot, path: str, lease_s: float = LEASE_S):
        self.root, self.path, self.lease_s = root, path, lease_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def body(self) -> dict:
        return {
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expires": time.time() + self.lease_s,
        }

    def create(self) -> bool:
        """Write the object if none is there; True when this lease now holds it."""
        if not self.root.write_json(self.path, self.body(), create_only=True):
            return False
        self._renew_in_background()
        return True

    def _renew_in_background(self) -> None:
        def renew() -> None:
            while not self._stop.wait(self.lease_s / 4):
                with contextlib.suppress(StoreError):  # the next renewal tries again
                    self.root.write_json(self.path, self.body())

        self._thread = threading.Thread(target=renew, name=f"lease-{self.path}", daemon=True)
        self._thread.start()

    def stop(self, delete: bool = True) -> None:
        """Stop renewing and delete the object (the pack is no longer held by this job)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if delete:
            with contextlib.suppress(StoreError):
                self.root.remove(self.path)


def live(root: PackRoot, folder: str) -> list[dict]:
    """The leases under a folder that have not run out."""
    now, found = time.time(), []
    for name in root.sizes(folder):
        body = root.read_json(f"{folder}/{name}")
        if body and body.get("expires", 0) > now:
            found.append(body)
    return found


class Hold:
    """What a job holds on one pack until release(): a file lock or a lease."""

    def __init__(self, release: Any):
        self._release = release

    def release(self) -> None:
        """Let the pack go (idempotent)."""
        release, self._release = self._release, None
        if release is not None:
            release()


def hold_to_read(root: PackRoot, fingerprint: str) -> Hold:
    """Hold a complete pack while a job reads it: `packs.py clean` leaves it alone."""
    if not root.remote:
        fd = root.open_lock(fingerprint)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a cleaner deletes the pack
        return Hold(lambda: os.close(fd))
    lease = Lease(root, root.path(f"{fingerprint}.uses", f"{uuid.uuid4().hex}.json"))
    lease.create()
    return Hold(lease.stop)


@contextlib.contextmanager
def hold_to_write(root: PackRoot, fingerprint: str, done: Any, poll_s: float = 1.0) -> Iterator[bool]:
    """Within: True when this job holds the pack to write it; False when `done()` found another
    job's finished pack while this one waited. One writer at a time; a dead writer's hold lapses."""
    if not root.remote:
        fd = root.open_lock(fingerprint)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another job writes this pack
            yield not done()
        finally:
            os.close(fd)
        return
    claims = root.path(f"{fingerprint}.claims")
    lease = None
    while lease is None:
        if done():
            yield False
            return
        taken = root.sizes(claims)
        generation = max((int(name.split(".")[0]) for name in taken), default=-1)
        current = root.read_json(f"{claims}/{generation:06d}.json") if generation >= 0 else None
        if current is None or current.get("expires", 0) <= time.time():  # free, or its writer died
            candidate = Lease(root, f"{claims}/{generation + 1:06d}.json")
            if candidate.create():
                lease = candidate
                continue
        time.sleep(poll_s)
    try:
        yield not done()
    finally:
        lease.stop(delete=False)
        root.remove(claims)  # every generation: the pack is complete or its writer gave up


def cache_folder(root_url: str, fingerprint: str) -> Path:
    """This machine's copy of a store's pack (by root too: two stores' copies are two packs)."""
    return PACK_CACHE / hashlib.sha256(root_url.rstrip("/").encode()).hexdigest()[:12] / fingerprint


def file_sha256(path: Path | str, fs: Any = None) -> str:
    """A file's SHA-256, read in 4 MB blocks; through an fsspec filesystem (a store's object) if given."""
    digest = hashlib.sha256()
    with fs.open(path, "rb", block_size=4 * 2**20) if fs is not None else open(path, "rb") as f:
        while chunk := f.read(4 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()
