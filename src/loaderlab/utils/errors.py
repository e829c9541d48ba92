"""How an error is judged: by what it is and what it was raised from, never by a check made before it."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work; the message says what to change."""


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
