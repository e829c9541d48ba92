"""Credentials kept out of a job's pickle files: masked on the way in, restored in the job's process.

A job's config carries what its overrides gave (`+data.storage_options.secret=...`, `+x.token=...`),
and so do the overrides Hydra keeps beside it. Every string of the pickle that holds one of those
values is written with the value replaced by a placeholder, and the values themselves travel to the
job's process in its environment (never its argv, which `ps` shows to every user); the job takes
them out of its environment at once and puts each back where it was. The job's result file, which
carries its config back, is masked the same way.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import cloudpickle
from omegaconf import DictConfig, OmegaConf

from loaderlab.data.storage import SAFE_OPTIONS, redact_overrides, secret_values

SECRETS_ENV = "LOADERLAB_JOB_SECRETS"
# Keys whose values are credentials wherever they sit in the config (storage_options: all but SAFE_OPTIONS).
SECRET_KEY = re.compile(r"secret|passw|token|credential|(^|[._+-]|api)key$", re.IGNORECASE)
# A secret's placeholder: NUL, a private-use character that numbers it, NUL; no secret holds those.
_FIRST = 0xF0000
_PLACEHOLDER = re.compile("\x00([\U000f0000-\U000ffffd])\x00")


def secrets_in(configs: Iterable[DictConfig]) -> list[str]:
    """The credential strings in these configs: storage_options values that redact() hides, values of
    secret-looking keys, and the value text of overrides that show either (a sweep's `a,b` whole)."""
    found: list[str] = []
    for cfg in configs:
        tree = OmegaConf.to_container(cfg, resolve=False)
        for path, value in _leaves(tree, ()):
            key = path[-1] if path else ""
            if "storage_options" in path:
                if key == "endpoint_url":
                    found += secret_values({key: value})
                    continue
                if key in SAFE_OPTIONS:
                    continue
            elif not SECRET_KEY.search(key):
                continue
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                found.append(str(value))
        given = tree.get("hydra", {}).get("overrides", {}) if isinstance(tree, dict) else {}
        overrides = [*(given.get("task") or []), *(given.get("hydra") or [])]  # as written: unresolved
        found += [_value_text(o) for o in overrides if _shows_secret(str(o))]
    return sorted({s for s in found if s}, key=len, reverse=True)  # the longest first: "ab" before "a"


class Masker:
    """Pickles with the given secret strings as placeholders; unpickles them back."""

    def __init__(self, secrets: Iterable[str]):
        self.secrets = list(secrets)
        self._index = {s: i for i, s in enumerate(self.secrets)}
        self._numbers = {int(s): i for i, s in enumerate(self.secrets) if re.fullmatch(r"-?\d+", s)}
        alternatives = "|".join(re.escape(s) for s in self.secrets)
        self._pattern = re.compile(alternatives) if self.secrets else None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Masker:
        """In the job's process: the secrets its launcher passed, taken out of the environment."""
        environ = os.environ if environ is None else environ
        return cls(json.loads(environ.pop(SECRETS_ENV, "[]")))

    def env(self) -> dict[str, str]:
        """What the job's process needs in its environment to restore the secrets."""
        return {SECRETS_ENV: json.dumps(self.secrets)} if self.secrets else {}

    def dumps(self, obj: Any) -> bytes:
        """cloudpickle.dumps, with no secret string in its bytes."""
        buffer = io.BytesIO()
        _MaskingPickler(buffer, self).dump(obj)
        return buffer.getvalue()

    def loads(self, data: bytes) -> Any:
        """pickle.loads of what dumps wrote, every secret put back."""
        return _RestoringUnpickler(io.BytesIO(data), self).load()

    def mask(self, obj: Any) -> bytes | None:
        """The persistent id of an object that holds a secret (a string, or a number a secret reads as).

        It is bytes, which no mask() call matches: a str in it would be masked again, without end."""
        if self._pattern is None:
            return None
        if type(obj) is str and self._pattern.search(obj):
            masked = self._pattern.sub(lambda m: f"\x00{chr(_FIRST + self._index[m.group()])}\x00", obj)
            return b"s" + masked.encode("utf-8", "surrogatepass")
        if type(obj) is int and obj in self._numbers:
            return b"i" + str(self._numbers[obj]).encode()
        return None

    def restore(self, pid: bytes) -> Any:
        """The object a persistent id stands for."""
        kind, body = pid[:1], pid[1:].decode("utf-8", "surrogatepass")
        if kind == b"i":
            return int(self.secrets[int(body)])
        return _PLACEHOLDER.sub(lambda m: self.secrets[ord(m.group(1)) - _FIRST], body)


class _MaskingPickler(cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO, masker: Masker):
        super().__init__(file)
        self._masker = masker

    def persistent_id(self, obj: Any) -> bytes | None:
        return self._masker.mask(obj)


class _RestoringUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, masker: Masker):
        super().__init__(file)
        self._masker = masker

    def persistent_load(self, pid: Any) -> Any:
        return self._masker.restore(pid)


def _leaves(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(key path, value) of every leaf; a list's items under the list's own key."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _leaves(value, (*path, str(key)))
    elif isinstance(node, list | tuple):
        for value in node:
            yield from _leaves(value, path)
    else:
        yield path, node


def _shows_secret(override: str) -> bool:
    """Whether a command-line override carries a credential: redact_overrides hides part of it, or
    its key looks like one (a.token=...)."""
    key, sep, value = override.partition("=")
    if not sep or not value:
        return False
    return redact_overrides([override])[0] != override or bool(SECRET_KEY.search(key.split(".")[-1]))


def _value_text(override: str) -> str:
    return override.partition("=")[2]
