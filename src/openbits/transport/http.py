"""HTTP(S) downloads with BITS semantics: validated resume, restart when the
remote file changed, and errors sorted into transient and permanent.

One `HttpTransport` owns one aiohttp session and one `fastget` pool, so
connections are reused across files and jobs (10,000 small files cost
connections, not bytes). Plain http GETs take the fast path; aiohttp takes
https, proxies, challenges, chunked bodies and the origins that needed it once.
Whether an answer is the one asked for is httpanswer.py's; how a download fails, httperrors.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace

import aiohttp
from yarl import URL

from ..enums import REDIRECT_POLICY_MASK, SIZE_UNKNOWN, ErrorContext, SecurityFlags
from ..errors import ErrorCode, TransferError
from ..pools import Pools
from . import fastget
from .httphead import FastGetError, ResponseHead, Unsupported, plain_request
from .auth import ANSWERED, ChallengeAuth, challenge_scheme
from .base import (DownloadSink, DownloadSpec, ProgressReporter, RemoteValidator, SmallAnswer, Throttle, status_phrase,
                   watching)
from .durable import DurableWriter
from .httpanswer import REDIRECTS, accept_answer, range_answer, redirect_target
from .httperrors import MAX_REDIRECTS, display_url, network_error, raise_for_status, redirect_failed
from .tls import TlsContexts
from .tunnel import TunnelConnector

#: aiohttp buffers up to twice this per connection before it stops reading the socket.
READ_BUFSIZE = 2 * 1024 * 1024

#: Largest read while a bandwidth cap applies, so the cap is smooth rather than bursty.
THROTTLED_READ = 64 * 1024


class HttpTransport:
    """Downloads http:// and https:// files into a caller's descriptor."""

    def __init__(
        self,
        *,
        connector_limit: int = 64,
        user_agent: str = "openbits/0.1",
        read_timeout: float = 60.0,
        connect_timeout: float = 30.0,
        fast_path: bool = True,
        pools: Pools | None = None,
        tls: TlsContexts | None = None,
    ) -> None:
        """`fast_path`: plain http GETs go through `fastget` (aiohttp takes them all when False). `pools`: the
        daemon's (without: the transport's own, shut down by aclose). `tls`: the SSL contexts per job settings
        (the administrator's CA file in them)."""
        self.pools = pools or Pools()
        self._own_pools = pools is None
        self.tls = tls or TlsContexts()
        self._connector_limit = connector_limit
        self._user_agent = user_agent
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None
        self._fast = fastget.FastClient(user_agent=user_agent, read_timeout=read_timeout,
                                        connect_timeout=connect_timeout, limit=connector_limit,
                                        splice_pool=self.pools.splice) if fast_path else None
        #: (host, port) of origins that needed aiohttp (a challenge, chunked bodies, https redirects): no fast path
        self._general: set[tuple[str, int]] = set()

    def session(self) -> aiohttp.ClientSession:
        """The shared aiohttp session, made on first use (it belongs to the running loop): the upload client
        sends its packets on it too."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=TunnelConnector(limit=self._connector_limit),
                timeout=self._timeout,
                auto_decompress=False,
                read_bufsize=READ_BUFSIZE,
                # We store bytes exactly as served: no content coding, ever.
                headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"},
            )
        return self._session

    async def aclose(self) -> None:
        if self._fast is not None:
            self._fast.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._own_pools:
            self.pools.shutdown()

    def batchable(self, url: str, headers: dict[str, str], proxy: str | None) -> URL | None:
        """The URL when `fetch_small` may ask for it: plain http the fast path takes, no proxy."""
        if self._fast is None or proxy is not None or url[:5].lower() != "http:":
            return None
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            return None
        if not parsed.raw_host or (parsed.raw_host, parsed.port or 0) in self._general:
            return None
        return parsed if plain_request(parsed, headers) else None

    async def fetch_small(self, files: list[tuple[URL, int]], headers: dict[str, str], lanes: int,
                          throttle: Throttle | None) -> list[SmallAnswer | None]:
        """Fresh small files of one origin (URLs from `batchable`), each whole into its empty descriptor
        over `lanes` connections. Per file its answer, or None: not fetched, ask `download` (which
        meets whatever went wrong again and reports it the BITS way). Raises nothing of its own."""
        assert self._fast is not None
        heads = await self._fast.fetch_all(files, headers, lanes, functools.partial(watching, throttle))
        return [None if head is None or head.content_length is None else
                SmallAnswer(RemoteValidator.of_answer(head.content_length, head.headers, lines=head.lines), head.headers,
                            functools.partial(_exchange, url, headers, head))
                for (url, _), head in zip(files, heads)]

    async def download(
        self, spec: DownloadSpec, fd: int, sink: DownloadSink, throttle: Throttle | None = None,
        auth: ChallengeAuth | None = None,
    ) -> RemoteValidator:
        """Fetch `spec.url` into `fd` from `spec.offset` on; returns the validator of the complete file.

        `auth` answers the origin's 401 challenges (never another origin's).

        Raises TransferError; `transient` says whether a retry may succeed.
        """
        url = _parse_url(spec.url)
        shown = display_url(url)
        writer = DurableWriter(fd, spec.offset, sink.durable, label=shown, pool=self.pools.sync,
                               defer_sync_below=spec.defer_sync_below)
        origin = (url.raw_host or "", url.port or 0)
        try:
            if (self._fast is not None and spec.proxy is None and origin not in self._general
                    and spec.method == "GET" and plain_request(url, spec.headers)):
                try:
                    return await self._download(url, shown, spec, writer, sink, throttle, auth, fast=True)
                except Unsupported:
                    self._general.add(origin)
            return await self._download(url, shown, spec, writer, sink, throttle, auth)
        except (aiohttp.ClientError, asyncio.TimeoutError, FastGetError) as exc:
            raise network_error(exc, shown, self._read_timeout) from exc
        finally:
            await writer.close()

    async def _download(
        self,
        url: URL,
        shown: str,
        spec: DownloadSpec,
        writer: DurableWriter,
        sink: DownloadSink,
        throttle: Throttle | None,
        auth: ChallengeAuth | None = None,
        fast: bool = False,
    ) -> RemoteValidator:
        """One file; `fast` sends the requests through `fastget` (raises Unsupported before any byte is written)."""
        old = spec.validator
        # Without a validator we cannot prove our bytes belong to the current version: start over.
        resume = old is not None and spec.offset > 0 and not spec.dynamic_content and spec.method == "GET"
        while True:
            headers = dict(spec.headers)
            if resume and old is not None:
                headers["Range"] = f"bytes={spec.offset}-"
                if old.if_range is not None:
                    headers["If-Range"] = old.if_range
            async with (self._fast_get(url, headers, throttle, auth, spec, sink, shown) if fast
                        else self._get(url, headers, throttle, auth, spec, sink, shown)) as (resp, final):
                _tell_exchanges(sink, final, headers, resp)
                if resp.status not in (200, 206, 416):
                    raise_for_status(resp, shown)
                accepted = accept_answer(resp, spec.offset if resume else 0, old if resume else None)
                if accepted is None:
                    if not resume:
                        raise TransferError(
                            ErrorCode.BG_E_INSUFFICIENT_RANGE_SUPPORT,
                            f"The server sent {shown} with a Content-Range that does not match the request "
                            f"(HTTP {resp.status}, Content-Range: {resp.headers.get('Content-Range')!r}) "
                            "even when asked for the whole file. Use another server for this file.",
                            ErrorContext.REMOTE_FILE,
                            resp.status,
                            transient=False,
                        )
                    resume = False  # restart from zero, once
                    continue
                validator, start = accepted
                if final != url and spec.tls.flags & REDIRECT_POLICY_MASK == SecurityFlags.HTTP_REDIRECT_POLICY_ALLOW_REPORT:
                    sink.redirected(str(final))  # BG_HTTP_REDIRECT_POLICY_ALLOW_REPORT: the remote name is the final URL
                sink.started(validator, start)
                if start < writer.offset:
                    writer.restart()
                if resp.status == 416:
                    return validator  # nothing was missing; the body is the server's error page
                return await _receive(resp, validator, writer, sink, throttle, shown)

    async def download_range(self, spec: DownloadSpec, first: int, last: int | None, fd: int, sink: DownloadSink,
                             throttle: Throttle | None = None, auth: ChallengeAuth | None = None) -> RemoteValidator:
        """Bytes [first, last] of `spec.url` (last None: to its end) into `fd` from `spec.offset` (a local
        position) on, as AddFileWithRanges, RequestFileRanges and Metalink pieces want them; the version must
        be `spec.validator`'s when there is one (else VersionChanged). Returns the version served."""
        url = _parse_url(spec.url)
        shown = display_url(url)
        writer = DurableWriter(fd, spec.offset, sink.durable, label=shown, pool=self.pools.sync)
        headers = {**spec.headers, "Range": f"bytes={first}-{'' if last is None else last}"}
        old = spec.validator
        if old is not None and old.if_range is not None:
            headers["If-Range"] = old.if_range
        try:
            async with self.session().get(
                url, headers=headers, max_redirects=MAX_REDIRECTS, middlewares=None if auth is None else (auth,),
                proxy=spec.proxy, ssl=self.tls.context(spec.tls), read_bufsize=None if throttle is None else THROTTLED_READ,
            ) as resp:
                validator = range_answer(resp, first, last, old, shown)
                sink.started(validator, spec.offset)
                progress = ProgressReporter(sink)
                read = resp.content.readany if throttle is None else functools.partial(resp.content.read,
                                                                                      THROTTLED_READ)
                with watching(throttle, resp.connection.transport.get_extra_info("socket")
                              if resp.connection and resp.connection.transport else None):
                    while chunk := await read():
                        if throttle is not None:
                            await throttle.consume(len(chunk))
                        writer.write(chunk)
                        progress.update(writer.offset)
                wanted = (validator.size if last is None else last + 1) - first
                if writer.offset - spec.offset != wanted:
                    raise TransferError(ErrorCode.ERROR_INTERNET_CONNECTION_RESET, f"The connection for {shown} "
                                        f"ended after {writer.offset - spec.offset} of {wanted} bytes of a range; "
                                        "the job resumes from there.", ErrorContext.GENERAL_TRANSPORT, transient=True)
                sink.received(writer.offset)
                await writer.flush()
                return validator
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise network_error(exc, shown, self._read_timeout) from exc
        finally:
            await writer.close()

    @contextlib.asynccontextmanager
    async def _get(self, url: URL, headers: dict[str, str], throttle: Throttle | None, auth: ChallengeAuth | None,
                   spec: DownloadSpec, sink: DownloadSink, shown: str
                   ) -> AsyncIterator[tuple[aiohttp.ClientResponse, URL]]:
        """The response at the end of the redirects the job's policy lets us follow, and its URL."""
        for _ in range(MAX_REDIRECTS + 1):
            response = await self.session().request(
                spec.method, url, headers=headers, allow_redirects=False, middlewares=None if auth is None else (auth,),
                proxy=spec.proxy,  # SetProxySettings (core/proxy.py); https goes through a CONNECT tunnel
                ssl=self.tls.context(spec.tls),
                # bandwidth controller (issue 6): under a throttle aiohttp must not read megabytes ahead of us,
                # or the server sees our buffers fill, not our rate.
                read_bufsize=None if throttle is None else THROTTLED_READ,
            )
            location = response.headers.get("Location")
            if response.status not in REDIRECTS or location is None:
                break
            _tell_exchanges(sink, url, headers, response)  # each hop is a request of its own (-v shows it)
            response.release()
            url = redirect_target(url, response.status, location, spec.tls.flags, sink, shown)
        else:
            raise redirect_failed(shown, "TooManyRedirects")
        try:
            yield response, url
        finally:
            response.release()

    @contextlib.asynccontextmanager
    async def _fast_get(self, url: URL, headers: dict[str, str], throttle: Throttle | None,
                        auth: ChallengeAuth | None, spec: DownloadSpec, sink: DownloadSink, shown: str
                        ) -> AsyncIterator[tuple[fastget.Response, URL]]:
        """A fast-path response and its URL; redirects to plain http are followed as `_get` does, anything
        else the fast path does not do (a challenge `auth` could answer, a redirect to https) is Unsupported."""
        assert self._fast is not None
        read_ahead = fastget.READ_AHEAD if throttle is None else THROTTLED_READ
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._fast.get(url, headers, read_ahead)
            location = response.headers.get("Location")
            if response.status not in REDIRECTS or location is None:
                break
            _tell_exchanges(sink, url, headers, response)
            response.release()
            url = redirect_target(url, response.status, location, spec.tls.flags, sink, shown)
            if not plain_request(url, headers):
                raise Unsupported("a redirect away from plain http")
        else:
            raise redirect_failed(shown, "TooManyRedirects")
        try:
            if response.status == 401 and auth is not None and challenge_scheme(response) in ANSWERED:
                raise Unsupported("an authentication challenge")
            yield response, url
        finally:
            response.release()


def _exchange(url: URL, headers: Mapping[str, str],
              resp: aiohttp.ClientResponse | fastget.Response | ResponseHead) -> tuple[str, str]:
    """The request line of `url` (with its Range) and the answer's status line, as `transfer -v` shows them."""
    asked = f"GET {display_url(url)}" + (f" (Range: {headers['Range']})" if "Range" in headers else "")
    version = getattr(resp, "version", None)
    protocol = f"HTTP/{version.major}.{version.minor}" if version is not None else "HTTP/1.1"
    return asked, f"{protocol} {resp.status} {resp.reason or status_phrase(resp.status)}"


def _tell_exchanges(sink: DownloadSink, url: URL, headers: Mapping[str, str],
                    resp: aiohttp.ClientResponse | fastget.Response) -> None:
    sink.exchanged(*_exchange(url, headers, resp), resp.headers)


def _parse_url(raw: str) -> URL:
    try:
        url = URL(raw)
    except (ValueError, TypeError) as exc:
        raise TransferError(
            ErrorCode.ERROR_INTERNET_INVALID_URL,
            f"{raw!r} is not a valid URL: {exc}.",
            transient=False,
        ) from exc
    if url.scheme not in ("http", "https"):
        raise TransferError(
            ErrorCode.BG_E_PROTOCOL_NOT_AVAILABLE,
            f"Cannot download {display_url(url)}: the {url.scheme or 'missing'} scheme is not supported "
            "(use http://, https:// or file://).",
            transient=False,
        )
    if not url.host:
        raise TransferError(
            ErrorCode.ERROR_INTERNET_INVALID_URL, f"{display_url(url)} names no host.", transient=False
        )
    return url



async def _receive(
    resp: aiohttp.ClientResponse | fastget.Response,
    validator: RemoteValidator,
    writer: DurableWriter,
    sink: DownloadSink,
    throttle: Throttle | None,
    shown: str,
) -> RemoteValidator:
    """Copy the body into the file; the size check catches a body cut short by a clean close."""
    progress = ProgressReporter(sink)
    limit = None if throttle is None else THROTTLED_READ
    spliced = 0  # body bytes left for splice(2) after the fast path's buffer is written
    if isinstance(resp, fastget.Response):
        sock, read = resp.socket(), functools.partial(resp.chunk, limit)
        if throttle is None:
            spliced = resp.hand_over(fastget.SPLICE_MIN)
    else:
        sock = resp.connection.transport.get_extra_info("socket") if resp.connection and resp.connection.transport else None
        read = resp.content.readany if limit is None else functools.partial(resp.content.read, limit)
    with watching(throttle, sock):
        while chunk := await read():
            if throttle is not None:
                # Bounded reads, paid for before they count: aiohttp may have buffered megabytes.
                await throttle.consume(len(chunk))
            writer.write(chunk)
            progress.update(writer.offset)
        if spliced:
            await _splice(resp, writer, progress, spliced)  # type: ignore[arg-type]
    if validator.size != SIZE_UNKNOWN and writer.offset != validator.size:
        raise TransferError(
            ErrorCode.ERROR_INTERNET_CONNECTION_RESET,
            f"The connection for {shown} ended after {writer.offset} of {validator.size} bytes; "
            "the job resumes from there.",
            ErrorContext.GENERAL_TRANSPORT,
            transient=True,
        )
    sink.received(writer.offset)
    await writer.flush()
    return validator if validator.size != SIZE_UNKNOWN else replace(validator, size=writer.offset)


async def _splice(resp: fastget.Response, writer: DurableWriter, progress: ProgressReporter, count: int) -> None:
    """The rest of a large fast-path body straight from the socket into the file (see fastget.SPLICE_MIN)."""
    def moved(nbytes: int) -> None:
        writer.advance(nbytes)
        progress.update(writer.offset)

    try:
        await resp.splice_rest(writer.fd, writer.offset, count, moved)
    except TimeoutError:
        raise
    except OSError as exc:  # the temporary file's: the socket's come as Broken
        raise writer.failed(exc) from exc
