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

from loaderlab.utils.errors import error_chain
from loaderlab.utils.progress import Progress
from loaderlab.utils.system import usable_cores

# storage_options values shown in params, tags, run names and logs: only these keys', whatever
# nests them (client_kwargs, config_kwargs). Every other value is a possible secret, shown as ***.
SAFE_OPTIONS = frozenset(
    {
        "endpoint_url",  # its user:password@, if any, is hidden
        "region_name", "anon", "use_ssl", "verify", "requester_pays", "version_aware", "cache_regions",
        "default_block_size", "default_fill_cache", "default_cache_type", "skip_instance_cache",
        "use_listings_cache", "listings_expiry_time", "max_pool_connections", "connect_timeout",
        "read_timeout", "retries", "max_attempts", "mode", "signature_version", "addressing_style",
        "max_concurrency", "fetch_concurrency", "project", "consistency",
    }
)  # fmt: skip
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


def redact(options: Any, key: str = "") -> Any:
    """storage_options as shown in params, tags and logs: values under SAFE_OPTIONS keys as they are
    (an endpoint's user info hidden), every other value ***. `key` is the key `options` sits under."""
    if isinstance(options, dict):
        return {k: redact(v, str(k)) for k, v in options.items()}
    if isinstance(options, list | tuple):
        return [redact(v, key) for v in options]
    if key not in SAFE_OPTIONS:
        return REDACTED
    if key == "endpoint_url" and isinstance(options, str):
        return without_user_info(options)
    return options


def without_user_info(url: str) -> str:
    """The URL with any user:password@ part shown as ***@."""
    return _USER_INFO.sub(rf"\1{REDACTED}@", url)


def secret_values(options: Any, key: str = "") -> list[str]:
    """The strings redact() hides, to scrub from files logged as artifacts (.hydra/, logs)."""
    if isinstance(options, dict):
        return [v for k, value in options.items() for v in secret_values(value, str(k))]
    if isinstance(options, list | tuple):
        return [v for value in options for v in secret_values(value, key)]
    if not isinstance(options, str) or not options:
        return []
    if key not in SAFE_OPTIONS:
        return [options]
    found = _USER_INFO.search(options) if key == "endpoint_url" else None
    return [found.group(2)] if found else []


def redact_overrides(overrides: Sequence[str]) -> list[str]:
    """Hydra command-line overrides with storage_options shown as redact() shows them, whatever their
    form: one key (data.storage_options.key=...), a nested key, or a whole dict (+data.storage_options={})."""
    return [_redact_override(o) for o in overrides]


_USER_INFO = re.compile(r"^([a-zA-Z][\w+.-]*://)([^/@]+)@")  # scheme://user:password@


def _redact_override(override: str) -> str:
    key, sep, _ = override.partition("=")
    path = key.lstrip("~+").split(".")
    if not sep or "storage_options" not in path:
        return override
    below = path[path.index("storage_options") + 1 :]
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_override(override)
        if parsed.is_sweep_override():
            raise ValueError("a sweep")  # each job's own value is redacted in its run
        shown = redact(parsed.value(), below[-1] if below else "")
    except Exception:  # noqa: BLE001  a value we cannot read is hidden whole
        return f"{key}={REDACTED}"
    return f"{key}={_hydra_value(shown)}"


def _hydra_value(value: Any) -> str:
    """A value written back in Hydra's override syntax, e.g. {key: ***, region_name: eu-west-1}."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_hydra_value(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


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
            # botocore's adaptive mode retries throttling (503 SlowDown) and dropped connections with
            # backoff and slows its own request rate: one bad answer does not end a run or a pack.
            config.setdefault("retries", {"max_attempts": 10, "mode": "adaptive"})
            options["config_kwargs"] = config
        try:
            return fsspec.filesystem(protocol, **options)
        except (ImportError, ValueError) as e:
            raise StoreError(
                f"Reading {url} needs fsspec's {protocol}:// support ({e}). For S3: pip install -e '.[s3]'; "
                "for gs:// gcsfs, for az:// adlfs."
            ) from None

    def list_files(self, url: str, progress: bool = True) -> list[str]:
        """Every object under the URL, as URLs, from the store's paginated listing."""
        fs = self.filesystem(url)
        # fsspec's find answers once, after the last page: the time shows until the count and rate do.
        with Progress(None, "object", f"Listing {url}", progress, heartbeat=1.0) as bar:
            try:
                found = fs.find(url.rstrip("/"), withdirs=False, detail=False)
            except Exception as e:  # noqa: BLE001  every store raises its own kind
                raise StoreError(explain(url, e)) from None
            bar.update(len(found))
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
        # Keyed by the URLs as given: the listing names them in the store's own scheme (s3a:// as s3://).
        facts = {
            key.split("://", 1)[-1]: f"{info.get('size')}:{info.get('ETag') or info.get('etag') or ''}"
            for key, info in found.items()
        }
        return {url: facts[url.split("://", 1)[1]] for url in urls if url.split("://", 1)[1] in facts}

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


# Error codes (S3's, and their HTTP statuses) that mean the store refused who we are.
REFUSED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
     "AuthorizationHeaderMalformed", "AllAccessDisabled", "AccountProblem", "401", "403"}
)  # fmt: skip
MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
CREDENTIAL_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"})
CONNECT_ERRORS = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"})


def explain(url: str, error: BaseException) -> str:
    """What a store's error means for the URL, and what to change; never the credentials.

    Judged by the exception's type and the store's error code or HTTP status, never by its text,
    which may quote an object name such as '...20240403.jpg'."""
    chain = error_chain(error)
    code, status = _code_and_status(chain)
    names = {type(e).__name__ for e in chain}
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    if code == "NoSuchBucket":
        return f"{url}: the bucket '{bucket}' does not exist. Check the bucket name in the URL."
    if (
        code in REFUSED_CODES
        or status in (401, 403)
        or names & CREDENTIAL_ERRORS
        or any(isinstance(e, PermissionError) for e in chain)
    ):
        return (
            f"{url}: the store refused the credentials. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or the store's own credentials) for an identity that may read it."
        )
    if code in MISSING_CODES or status == 404 or any(isinstance(e, FileNotFoundError) for e in chain):
        return f"{url}: no such object (deleted, or a wrong prefix)."
    if names & CONNECT_ERRORS or any(isinstance(e, ConnectionError) for e in chain):
        return (
            f"{url}: the store does not answer ({type(error).__name__}). Check AWS_ENDPOINT_URL or "
            "data.storage_options.endpoint_url."
        )
    return f"{url}: the store failed the request ({type(error).__name__}: {_first_line(error)})."


def _code_and_status(chain: list[BaseException]) -> tuple[str | None, int | None]:
    """The store's error code and HTTP status: botocore's response, or a client's status_code/code."""
    for e in chain:
        response = getattr(e, "response", None)
        if isinstance(response, dict) and "Error" in response:
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return response["Error"].get("Code"), status
        status = getattr(e, "status_code", None) or getattr(e, "status", None)
        if isinstance(status, int):
            return None, status
        if isinstance(getattr(e, "code", None), int) and not isinstance(e, OSError):  # gcsfs' HttpError
            return None, e.code
    return None, None


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0][:200]
