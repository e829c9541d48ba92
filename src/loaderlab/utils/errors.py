"""How an error is judged: by what it is and what it was raised from, never by a check made before it."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; the message says what to change."""


def build(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, where a constructor's ValueError (its own message, naming the key and
    the value received) is raised as a ConfigError, and one of ours (a DatasetError) as itself, not
    wrapped in Hydra's InstantiationException."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if type(cause) is ValueError:
            raise ConfigError(str(cause)) from cause
        if isinstance(cause, ValueError):  # one of ours already (a DatasetError, say): as it is
            raise cause from None
        raise


def error_chain(error: BaseException | None) -> list[BaseException]:
    """The error and the errors it was raised from or during (`__cause__`, else `__context__`)."""
    chain: list[BaseException] = []
    while error is not None and error not in chain and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def is_no_answer(error: BaseException) -> bool:
    """Whether a connection was refused, reset or timed out anywhere in the error's chain (OS, urllib3
    or requests errors, under a client's own exception): the peer gave no answer at all."""
    import requests
    import urllib3

    silent = (
        ConnectionError,  # refused, reset, aborted, broken pipe
        TimeoutError,
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        urllib3.exceptions.NewConnectionError,
        urllib3.exceptions.ProtocolError,
        urllib3.exceptions.TimeoutError,
    )
    for e in error_chain(error):
        if isinstance(e, requests.exceptions.SSLError | urllib3.exceptions.SSLError):
            return False  # it answered, with a certificate we do not accept
        if isinstance(e, silent):
            return True
    return False
