"""Transport: the one interface a runner calls, whatever the file's scheme.

The runner asks for a file's download (or a batch of small files, or an upload client); the
transport layer picks how: http(s) through HttpTransport (aiohttp, or the lean fast path for plain
http), file:// through copy_local from a source the job's file broker opened, SMB shares through
copy_smb (and uploads there through upload_smb). What depends on the
job - its proxy, its credentials, its identities - comes in as a RemoteAccess the core binds.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Protocol
from urllib.parse import unquote, urlsplit

from yarl import URL

from ..pools import Pools
from .auth import ChallengeAuth
from .base import DownloadSink, DownloadSpec, RemoteValidator, SmallAnswer, Throttle
from .file import copy_local
from .http import HttpTransport
from .smb import SmbLogon, copy_smb, discard_smb_upload, is_smb, upload_smb
from .tls import TlsSettings
from .upload import HostWatch, UploadClient


class RemoteAccess(Protocol):
    """What a transfer needs of its job, bound to the job's identities by the core."""

    def http(self, url: str) -> tuple[str | None, ChallengeAuth | None]:
        """The proxy URL for `url` (None: direct; raises BG_E_INVALID_PROXY_INFO) and who answers challenges."""

    def open_source(self, path: str) -> Awaitable[int]:
        """A file:// source, opened read-only by the job's network identity."""

    def smb_credential(self) -> SmbLogon:
        """The logon to an SMB share: the job's (user, password, "ntlm" or "negotiate"), or its network identity's
        Kerberos context (transport/smb.py)."""


class Transport:
    def __init__(self, http: HttpTransport) -> None:
        self._http = http

    @property
    def pools(self) -> Pools:
        return self._http.pools

    async def download(self, spec: DownloadSpec, fd: int, sink: DownloadSink, throttle: Throttle | None,
                       access: RemoteAccess) -> RemoteValidator:
        """`spec.url` into `fd` from `spec.offset` on; the validator of the complete file (TransferError)."""
        if spec.url[:5].lower() == "file:":  # checked when added: one scheme, no urlsplit per http file
            source = await access.open_source(unquote(urlsplit(spec.url).path))
            try:
                return await copy_local(source, fd, spec.offset, sink, throttle, validator=spec.validator,
                                        pools=self.pools)
            finally:
                os.close(source)
        if is_smb(spec.url):
            return await copy_smb(spec.url, fd, spec.offset, sink, throttle, validator=spec.validator,
                                  credential=access.smb_credential(), pool=self.pools.smb, sync_pool=self.pools.sync)
        proxy, auth = access.http(spec.url)
        return await self._http.download(replace(spec, proxy=proxy), fd, sink, throttle, auth)

    async def download_range(self, spec: DownloadSpec, first: int, last: int | None, fd: int, sink: DownloadSink,
                             throttle: Throttle | None, access: RemoteAccess) -> RemoteValidator:
        """Remote bytes [first, last] into `fd` at `spec.offset` (http and https: see HttpTransport.download_range)."""
        proxy, auth = access.http(spec.url)
        return await self._http.download_range(replace(spec, proxy=proxy), first, last, fd, sink, throttle, auth)

    def batchable(self, url: str, headers: dict[str, str], proxy: str | None) -> URL | None:
        """The URL when `fetch_small` may take the file (see HttpTransport.batchable)."""
        return self._http.batchable(url, headers, proxy)

    async def fetch_small(self, files: list[tuple[URL, int]], headers: dict[str, str], lanes: int,
                          throttle: Throttle | None) -> list[SmallAnswer | None]:
        return await self._http.fetch_small(files, headers, lanes, throttle)

    def upload_client(self, proxy: str | None, auth: ChallengeAuth | None, hosts: HostWatch | None,
                      tls: TlsSettings) -> UploadClient:
        """A client of the BITS upload protocol on the shared session, with the job's TLS settings."""
        return UploadClient(self._http.session(), self.pools.reads, proxy, auth, hosts, self._http.tls.context(tls))

    async def upload_smb(self, url: str, fd: int, size: int, mtime_ns: int, tag: str,
                         acknowledged: Callable[[int], None], throttle: Throttle | None,
                         credential: SmbLogon) -> None:
        """The local file `fd` copied to an SMB remote name (see transport/smb.py) with the job's credential."""
        await upload_smb(url, fd, size, mtime_ns, tag, acknowledged, throttle, credential=credential,
                         pool=self.pools.smb, reads=self.pools.reads)

    async def discard_smb_upload(self, url: str, tag: str, credential: SmbLogon) -> None:
        """Cancel: the hidden file of an SMB upload is removed from the share."""
        await discard_smb_upload(url, tag, credential=credential, pool=self.pools.smb)

    async def aclose(self) -> None:
        await self._http.aclose()
