"""How an HTTP download fails, the BITS way: the error code, the context, whether a retry may succeed,
and a message that says what to do. Statuses, proxies that refuse a tunnel, certificates the job does not
accept, the network and redirects; the upload client reports its proxies and certificates with them too.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
from datetime import datetime, timezone
from typing import NoReturn

import aiohttp
from yarl import URL

from ..enums import ErrorContext
from ..errors import ErrorCode, TransferError
from .base import status_phrase
from .httphead import ConnectFailed
from .tls import certificate_error

#: Redirects a download follows at the most (the error that stops it says how many).
MAX_REDIRECTS = 10
_TRANSIENT_STATUS = frozenset({408, 429})


def display_url(url: URL) -> str:
    """The URL as errors show it: never with the user name or password."""
    return str(url.with_user(None)) if url.user or url.password else str(url)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds from now: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def raise_for_status(resp: aiohttp.ClientResponse, shown: str) -> NoReturn:
    """Every status but 200, 206 and 416: 5xx, 408 and 429 are worth a retry, the rest needs a person."""
    status = resp.status
    phrase = status_phrase(status, resp.reason)
    answer = f"The server answered {shown} with HTTP {status} {phrase}"
    if status >= 500 or status in _TRANSIENT_STATUS:
        retry_after = _retry_after(resp.headers.get("Retry-After"))
        wait = f" (it asked to wait {retry_after:.0f} s)" if retry_after is not None else ""
        raise TransferError(
            ErrorCode.http(status),
            f"{answer}{wait}; the job retries later.",
            ErrorContext.REMOTE_FILE,
            status,
            transient=True,
            retry_after=retry_after,
        )
    if status in (404, 410):
        advice = "Check the URL, or point the file at another server."
    elif status == 401:
        advice = "The server wants credentials; set them for the job."
    elif status == 407:
        advice = ("The proxy wants credentials: setcredentials JOB PROXY BASIC USER, or a ~/.netrc entry for "
                  "the proxy host (Basic only).")
    elif status == 403:
        advice = "The server refuses this client; check the URL and the server's permissions."
    else:
        advice = "Check the URL and the job's custom headers."
    raise TransferError(ErrorCode.http(status), f"{answer}. {advice}", ErrorContext.REMOTE_FILE, status, transient=False)


def proxy_refused(exc: aiohttp.ClientHttpProxyError, shown: str) -> TransferError:
    """https through a proxy: the proxy refused the CONNECT tunnel (407: it wants credentials)."""
    return TransferError(
        ErrorCode.http(exc.status),
        f"The proxy refused to connect to {shown} with HTTP {exc.status} {exc.message}"
        + ("; set PROXY credentials for the job (Basic) or a ~/.netrc entry for the proxy host."
           if exc.status == 407 else "; the job retries later." if exc.status >= 500 else "."),
        ErrorContext.REMOTE_FILE,
        exc.status,
        transient=exc.status >= 500 or exc.status in _TRANSIENT_STATUS,
    )


def certificate_refused(exc: aiohttp.ClientConnectorCertificateError, shown: str) -> TransferError:
    """The server's certificate failed the job's checks (its security flags, its trust): the BITS code for why."""
    error = exc.certificate_error
    code, why = certificate_error(getattr(error, "verify_code", 0), getattr(error, "verify_message", str(error)))
    return TransferError(code, f"The server's certificate for {shown} is not accepted: {why}.",
                         ErrorContext.GENERAL_TRANSPORT, transient=False)


def network_error(exc: BaseException, shown: str, read_timeout: float) -> TransferError:
    """Sort an aiohttp or fastget failure: redirects and bad URLs are permanent, everything on the wire is transient."""
    transport = ErrorContext.GENERAL_TRANSPORT
    if isinstance(exc, (aiohttp.TooManyRedirects, aiohttp.RedirectClientError)):
        return redirect_failed(shown, type(exc).__name__)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return proxy_refused(exc, shown)
    if isinstance(exc, aiohttp.InvalidURL):
        return TransferError(
            ErrorCode.ERROR_INTERNET_INVALID_URL, f"{shown} is not a valid URL: {exc}.", transient=False
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return certificate_refused(exc, shown)
    cause = exc.cause if isinstance(exc, ConnectFailed) else None
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(cause, socket.gaierror):
        code, what = ErrorCode.ERROR_INTERNET_NAME_NOT_RESOLVED, "the server's name does not resolve"
    elif isinstance(exc, aiohttp.ClientSSLError):
        code, what = ErrorCode.ERROR_INTERNET_SECURE_FAILURE, f"the TLS handshake failed ({exc})"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        code, what = ErrorCode.ERROR_INTERNET_CANNOT_CONNECT, f"cannot connect ({exc.strerror or exc})"
    elif isinstance(exc, aiohttp.ConnectionTimeoutError) or isinstance(cause, TimeoutError):
        code, what = ErrorCode.ERROR_INTERNET_TIMEOUT, "connecting to the server timed out"
    elif cause is not None:
        code, what = ErrorCode.ERROR_INTERNET_CANNOT_CONNECT, f"cannot connect ({cause.strerror or cause})"
    elif isinstance(exc, asyncio.TimeoutError):
        code, what = ErrorCode.ERROR_INTERNET_TIMEOUT, f"the server sent nothing for {read_timeout:g} s"
    else:
        code, what = ErrorCode.ERROR_INTERNET_CONNECTION_RESET, f"the connection broke ({exc or type(exc).__name__})"
    return TransferError(code, f"Downloading {shown}: {what}; the job retries later.", transport, transient=True)


def redirect_failed(shown: str, why: str) -> TransferError:
    return TransferError(
        ErrorCode.ERROR_HTTP_REDIRECT_FAILED,
        f"Following the redirects of {shown} failed ({why}, at most {MAX_REDIRECTS} are "
        "followed, only to http:// and https://). Use the final URL of the file.",
        ErrorContext.REMOTE_FILE,
        transient=False,
    )
