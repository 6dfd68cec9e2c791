"""JobAccess: a job's proxy, credentials and identities, bound for the transport (transport.router.RemoteAccess)."""

from __future__ import annotations

from ..model.config import PreconfiguredProxy
from ..model.job import Job
from ..transport.auth import ChallengeAuth
from ..transport.smb import SmbLogon
from .proxy import preconfigured_proxy, proxy_route
from .service import JobService
from .tokens import http_auth, smb_credential


class JobAccess:
    def __init__(self, service: JobService, job: Job) -> None:
        self._service, self._job = service, job
        #: PRECONFIG's proxy, read once per attempt (see preconfigured_proxy)
        self.preconfigured: PreconfiguredProxy = preconfigured_proxy(service.config)

    def http(self, url: str) -> tuple[str | None, ChallengeAuth | None]:
        proxy = proxy_route(self._job, self.preconfigured, url)  # BG_E_INVALID_PROXY_INFO
        return None if proxy is None else str(proxy.url), http_auth(self._service, self._job, url, proxy)

    async def open_source(self, path: str) -> int:
        return await self._service.remote_files_of(self._job).open_read(path)

    def smb_credential(self) -> SmbLogon:
        return smb_credential(self._service, self._job)
