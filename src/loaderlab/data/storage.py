"""Datasets at any fsspec URL (s3://, gs://, az://, ...): listing, reading, and store errors as messages.

Local paths never come here: they keep the plain-file path of decode.read_file. A URL's filesystem
comes from fsspec with `data.storage_options`, and credentials from the store's own chain (for S3:
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ~/.aws, instance roles).
"""

from __future__ import annotations

import asyncio
import posixpath
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loaderlab.utils.system import usable_cores

SECRET_KEY = re.compile(r"secret|password|token|credential|key$|^key|sas|signature", re.IGNORECASE)
REDACTED = "***"


def is_url(path: str) -> bool:
    """True for a URL that fsspec should read (s3://bucket/x), False for a local path or file://."""
    return "://" in str(path) and not str(path).startswith("file://")


def beside(url: str, relative: str) -> str:
    """`relative` resolved against the folder of `url`, as a path beside a local file would be."""
    if is_url(relative):
        return relative
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), relative))}"


def redact(options: Any) -> Any:
    """storage_options with every secret-looking value replaced, for params, tags and logs."""
    if isinstance(options, dict):
        return {k: REDACTED if SECRET_KEY.search(str(k)) else redact(v) for k, v in options.items()}
    if isinstance(options, list):
        return [redact(v) for v in options]
    return options


def redact_overrides(overrides: Sequence[str]) -> list[str]:
    """Hydra command-line overrides with each storage secret's value replaced (tags, run names)."""
    out = []
    for override in overrides:
        key, sep, _ = override.partition("=")
        secret = "storage_options" in key and SECRET_KEY.search(key.rsplit(".", 1)[-1])
        out.append(f"{key}{sep}{REDACTED}" if sep and secret else override)
    return out


def secret_values(options: Any) -> list[str]:
    """The values redact() would hide, to scrub from files logged as artifacts (.hydra/, logs)."""
    found: list[str] = []
    if isinstance(options, dict):
        for key, value in options.items():
            if SECRET_KEY.search(str(key)) and not isinstance(value, dict | list):
                found += [str(value)] if str(value) else []
            else:
                found += secret_values(value)
    elif isinstance(options, list):
        for value in options:
            found += secret_values(value)
    return found


class StoreError(OSError):
    """A store cannot be read as configured; the message names the URL and what to change."""


@dataclass(frozen=True)
class Storage:
    """How to reach URLs: fsspec's storage_options and how many objects one batch fetches at once."""

    options: dict = field(default_factory=dict)
    concurrency: int = 32

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(
                f"data.fetch_concurrency must be at least 1. Received: fetch_concurrency={self.concurrency}"
            )

    def filesystem(self, url: str) -> Any:
        """fsspec's filesystem for the URL (fsspec keeps one instance per protocol and options)."""
        try:
            import fsspec
        except ImportError:
            raise StoreError(f"Reading {url} needs fsspec: pip install -e '.[s3]'.") from None
        protocol = url.split("://", 1)[0]
        options = dict(self.options)
        if protocol in ("s3", "s3a"):
            # botocore keeps 10 connections per client by default: 10 requests in flight at most.
            config = dict(options.get("config_kwargs") or {})
            config.setdefault("max_pool_connections", max(10, self.concurrency * usable_cores()))
            options["config_kwargs"] = config
        try:
            return fsspec.filesystem(protocol, **options)
        except (ImportError, ValueError) as e:
            raise StoreError(
                f"Reading {url} needs fsspec's {protocol}:// support ({e}). For S3: pip install -e '.[s3]'; "
                "for gs:// gcsfs, for az:// adlfs."
            ) from None

    def list_files(self, url: str) -> list[str]:
        """Every object under the URL, as URLs, from the store's paginated listing."""
        fs = self.filesystem(url)
        try:
            found = fs.find(url.rstrip("/"), withdirs=False, detail=False)
        except Exception as e:  # noqa: BLE001  every store raises its own kind
            raise StoreError(explain(url, e)) from None
        return sorted(fs.unstrip_protocol(p) for p in found)

    def object_facts(self, urls: Sequence[str]) -> dict[str, str]:
        """'size:etag' of each object, from one paginated listing of their common prefix."""
        prefix = posixpath.commonpath([u.split("://", 1)[1] for u in urls])
        scheme = urls[0].split("://", 1)[0]
        fs = self.filesystem(urls[0])
        try:
            found = fs.find(f"{scheme}://{prefix}", withdirs=False, detail=True)
        except Exception as e:  # noqa: BLE001
            raise StoreError(explain(f"{scheme}://{prefix}", e)) from None
        return {
            fs.unstrip_protocol(key): f"{info.get('size')}:{info.get('ETag') or info.get('etag') or ''}"
            for key, info in found.items()
        }

    def read_text(self, url: str) -> str:
        """A small object (a CSV table) as text."""
        fs = self.filesystem(url)
        try:
            return fs.cat_file(url).decode("utf-8-sig")
        except Exception as e:  # noqa: BLE001
            raise StoreError(explain(url, e)) from None

    def read_many(self, urls: Sequence[str]) -> list[bytes | Exception]:
        """The objects' bytes, `concurrency` requests in flight; a failed read gives its exception."""
        fs = self.filesystem(urls[0])
        if not getattr(fs, "async_impl", False):  # a blocking filesystem: one object at a time
            return [_cat_or_error(fs, url) for url in urls]
        from fsspec.asyn import sync

        return sync(fs.loop, _gather, fs, list(urls), self.concurrency)


def storage_of(data_cfg: Any) -> Storage:
    """The Storage a `data` config asks for (defaults where its group has no such keys)."""
    options = data_cfg.get("storage_options") or {}
    if hasattr(options, "items") and not isinstance(options, dict):  # an OmegaConf node
        from omegaconf import OmegaConf

        options = OmegaConf.to_container(options, resolve=True)
    return Storage(dict(options), int(data_cfg.get("fetch_concurrency") or Storage.concurrency))


def release_filesystems() -> None:
    """Drop the filesystems fsspec cached for this process's URLs, closing their connections; a job
    calls it as it ends. fsspec's one IO thread stays: it is the process's, shared by every job."""
    if "fsspec" not in sys.modules:
        return
    from fsspec.registry import _registry

    for filesystem in _registry.values():
        filesystem.clear_instance_cache()


def _cat_or_error(fs: Any, url: str) -> bytes | Exception:
    try:
        return fs.cat_file(url)
    except Exception as e:  # noqa: BLE001  returned to the caller, which names the object
        return e


async def _gather(fs: Any, urls: list[str], limit: int) -> list[bytes | Exception]:
    gate = asyncio.Semaphore(limit)

    async def one(url: str) -> bytes | Exception:
        async with gate:
            try:
                return await fs._cat_file(url)  # fsspec's async API: no HEAD before the GET
            except Exception as e:  # noqa: BLE001
                return e

    return await asyncio.gather(*(one(url) for url in urls))


def explain(url: str, error: BaseException) -> str:
    """What a store's error means for the URL, and what to change; never the credentials."""
    text = f"{type(error).__name__}: {error}"
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    if re.search(r"NoSuchBucket|bucket does not exist|specified bucket", text, re.IGNORECASE):
        return f"{url}: the bucket '{bucket}' does not exist. Check the bucket name in the URL."
    if re.search(
        r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|NoCredentials|"
        r"Unable to locate credentials|PermissionError|ExpiredToken|403",
        text,
        re.IGNORECASE,
    ):
        return (
            f"{url}: the store refused the credentials. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or the store's own credentials) for an identity that may read it."
        )
    if isinstance(error, FileNotFoundError) or "NoSuchKey" in text or "Not Found" in text:
        return f"{url}: no such object (deleted, or a wrong prefix)."
    if re.search(r"Could not connect|Cannot connect|ConnectionError|EndpointConnectionError", text):
        return (
            f"{url}: the store does not answer ({type(error).__name__}). Check AWS_ENDPOINT_URL or "
            "data.storage_options.endpoint_url."
        )
    return f"{url}: the store failed the request ({type(error).__name__}: {_first_line(error)})."


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0][:200]
