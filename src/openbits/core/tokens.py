"""IBitsTokenOptions and SetCredentials/RemoveCredentials: the job operations on its secrets.

The access rule is BITS's (Windows 10 1607 and later): the caller must be the owner or an
administrator, and a caller who is not an administrator may attach only a helper who is not one.
A helper comes from a PAM logon, from the caller's own connection, or from a one-time ticket the
owner asked for earlier, redeemed by a process that really runs as the helper (the analog of
SetHelperToken while impersonating: the daemon takes the identity from SO_PEERCRED, never a claim).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import secrets
import netrc
import os
import pwd
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from ..enums import ErrorContext, TokenFlags
from ..errors import BitsError, ErrorCode
from ..identity import Identity
from ..identity.logon import LogonChecker
from ..enums import AuthScheme, AuthTarget
from ..identity.gss import SMB_SERVICE
from ..identity.localfiles import LocalFiles
from ..transport.smb import SmbLogon
from ..identity.sealing import KeyRing, SealBroken
from ..identity.tokens import Credential, TokenStore
from ..transport.auth import ChallengeAuth
from ..transport.credentials import Contexts, Lookup, SecurityContext
from ..model.job import Job
from .proxy import ProxyRoute
from .service import JobService

log = logging.getLogger("openbits.tokens")

#: BG_BASIC_CREDENTIALS limits (UNLEN-ish user names, a generous password)
MAX_USERNAME = 300
MAX_PASSWORD = 65536
#: A ~/.netrc larger than this is not one
MAX_NETRC = 1 << 20
_SCHEMES = {"basic": AuthScheme.BASIC, "digest": AuthScheme.DIGEST}
#: the schemes whose security context runs in the network identity's broker (identity/gss.py)
_CONTEXT_SCHEMES = {"negotiate": AuthScheme.NEGOTIATE, "ntlm": AuthScheme.NTLM}


def require_tokens(jobs: Iterable[Job], why: str) -> list[Job]:
    """Jobs whose helper token is gone and that want to move bytes with one go to ERROR (BG_E_TOKEN_REQUIRED);
    the ones that did."""
    stopped = []
    for job in jobs:
        if job.helper_token_flags and job.state.is_active:
            job.set_error(BitsError(
                ErrorCode.BG_E_TOKEN_REQUIRED,
                f"{why}; set the helper token again (settoken) or clear the flags (settokenflags JOB 0), then resume",
                ErrorContext.LOCAL_FILE if job.helper_token_flags & TokenFlags.LOCAL_FILE else ErrorContext.REMOTE_FILE,
            ), transient=False)
            stopped.append(job)
    return stopped


def require_tokens_after_restart(jobs: list[Job]) -> None:
    """No helper token survives a restart."""
    require_tokens(jobs, "openbitsd restarted and helper tokens live in memory only")


def _sealed_name(target: AuthTarget, scheme: AuthScheme) -> str:
    """A credential's key in Job.sealed_credentials, and how messages name it: "SERVER BASIC"."""
    return f"{target.name} {scheme.name}"


def _label(job_id: str, name: str) -> str:
    """What a sealed credential is bound to: its job and pair (identity/sealing.py's associated data)."""
    return f"openbits job {job_id} credentials {name}"


def restore_credentials(jobs: Iterable[Job], tokens: TokenStore, keys: KeyRing) -> list[Job]:
    """At start-up, before anything runs: the credentials stored with the jobs, opened into memory; the jobs to
    save again. Ones that do not open (another machine's key) are erased, and their job goes to ERROR with
    BG_E_INVALID_CREDENTIALS naming them."""
    changed = []
    for job in (job for job in jobs if job.sealed_credentials):  # a final job has none (Job.cancel, complete)
        sealer = keys.get()
        broken = []
        for name, sealed in list(job.sealed_credentials.items()):
            target, scheme = name.split(" ")
            try:
                username, password = json.loads(sealer.open(sealed, _label(job.id, name)))
            except SealBroken:
                broken.append(name)
                del job.sealed_credentials[name]
                continue
            tokens.set_credential(job.id, AuthTarget[target], AuthScheme[scheme], Credential(username, password))
        if broken:
            pairs = " and ".join(broken)
            log.error("job %s: its stored %s credentials do not open with this machine's key", job.id, pairs)
            job.set_error(BitsError(
                ErrorCode.BG_E_INVALID_CREDENTIALS,
                f"the {pairs} credentials stored with this job do not open with this machine's key (the store was "
                f"moved from another machine, or its key changed); set them again (setcredentials JOB {broken[0]} "
                "USER --password-stdin), then resume", ErrorContext.GENERAL_QUEUE_MANAGER), transient=False)
            changed.append(job)
    return changed


class TokenService:
    """The API's helper-token and credential operations over a JobService."""

    def __init__(self, service: JobService, logons: LogonChecker, keys: KeyRing) -> None:
        self.service = service
        self.logons = logons
        #: the key that seals the credentials stored with a job (identity/sealing.py)
        self._keys = keys

    def _attachable(self, caller_is_admin: bool, helper: Identity) -> None:
        if helper.is_admin(self.service.config.admin_group) and not caller_is_admin:
            raise BitsError(ErrorCode.E_ACCESSDENIED,
                            f"{helper.name} is an administrator; only an administrator may attach an administrator's "
                            "helper token", ErrorContext.GENERAL_QUEUE_MANAGER)

    async def _attach(self, job: Job, helper: Identity, set_by: int) -> Job:
        """`set_by`: the uid whose session sets it; the token goes when they log off (core/logons.py)."""
        job.check_modifiable()
        self.service.tokens.set_helper(job.id, helper, set_by)
        job.touch()
        await self.service.commit(job)
        return job

    async def set_from_password(self, caller: Identity, ref: str, username: str, password: str) -> Job:
        job = self.service.find(caller, ref)
        helper = await self.logons.logon(caller, username, password)
        self._attachable(self.service.is_admin(caller), helper)
        return await self._attach(job, helper, caller.uid)

    async def set_from_caller(self, caller: Identity, ref: str) -> Job:
        """The caller becomes the helper of a job it may see (an owner or administrator acting as itself)."""
        job = self.service.find(caller, ref)
        self._attachable(self.service.is_admin(caller), caller)
        return await self._attach(job, caller, caller.uid)

    async def set_from_ticket(self, caller: Identity, ref: str, ticket: str) -> Job:
        """The caller, who need not see the job, becomes its helper with the owner's one-time ticket."""
        key = ref.strip().strip("{}").upper()
        job = self.service.jobs.get(key)
        granted = self.service.tokens.redeem_ticket(ticket, key) if job is not None else None
        if job is None or granted is None:
            raise BitsError(ErrorCode.BG_E_NOT_FOUND,
                            f"no job {ref!r} with that ticket (tickets work once, for a minute, with the job's GUID)",
                            ErrorContext.GENERAL_QUEUE_MANAGER)
        self._attachable(granted.issuer_is_admin, caller)
        log.info("uid %d became the helper of job %s by ticket", caller.uid, job.id)
        return await self._attach(job, caller, granted.issuer)

    def issue_ticket(self, caller: Identity, ref: str) -> str:
        job = self.service.find(caller, ref)
        job.check_modifiable()
        return self.service.tokens.issue_ticket(job.id, caller.uid, self.service.is_admin(caller))

    async def clear(self, caller: Identity, ref: str) -> Job:
        """ClearHelperToken: the flags stay."""
        job = self.service.find(caller, ref)
        self.service.tokens.clear_helper(job.id)
        job.touch()
        await self.service.commit(job)
        return job

    async def set_flags(self, caller: Identity, ref: str, flags: int) -> Job:
        job = self.service.find(caller, ref)
        job.check_modifiable()
        if flags & ~int(TokenFlags.LOCAL_FILE | TokenFlags.NETWORK):
            raise BitsError(ErrorCode.E_INVALIDARG, f"token flags 0x{flags:x}: only LOCAL_FILE (0x1) and NETWORK "
                            "(0x2) exist", ErrorContext.GENERAL_QUEUE_MANAGER)
        helper = self.service.tokens.helper(job.id)
        if helper is not None:
            self._attachable(self.service.is_admin(caller), helper)
        job.helper_token_flags = flags
        job.touch()
        await self.service.commit(job)
        return job

    def helper_of(self, caller: Identity, ref: str) -> tuple[Job, Identity | None]:
        job = self.service.find(caller, ref)
        return job, self.service.tokens.helper(job.id)

    async def set_credentials(self, caller: Identity, ref: str, target: AuthTarget, scheme: AuthScheme,
                              credential: Credential) -> Job:
        job = self.service.find(caller, ref)
        job.check_modifiable()
        if scheme == AuthScheme.PASSPORT:
            raise BitsError(ErrorCode.BG_E_INVALID_AUTH_SCHEME, "scheme PASSPORT: Microsoft's Passport service has no "
                            "Linux client; openbits answers BASIC, DIGEST, NTLM and NEGOTIATE challenges",
                            ErrorContext.GENERAL_QUEUE_MANAGER)
        if len(credential.username) > MAX_USERNAME:
            raise BitsError(ErrorCode.BG_E_USERNAME_TOO_LARGE, f"the user name is longer than {MAX_USERNAME} "
                            "characters", ErrorContext.GENERAL_QUEUE_MANAGER)
        if len(credential.password) > MAX_PASSWORD:
            raise BitsError(ErrorCode.BG_E_PASSWORD_TOO_LARGE, f"the password is longer than {MAX_PASSWORD} "
                            "characters", ErrorContext.GENERAL_QUEUE_MANAGER)
        self.service.tokens.set_credential(job.id, target, scheme, credential)
        name = _sealed_name(target, scheme)
        secret = json.dumps([credential.username, credential.password]).encode()
        sealer = self._keys.sealer or await asyncio.get_running_loop().run_in_executor(None, self._keys.get)
        job.sealed_credentials = {**(job.sealed_credentials or {}), name: sealer.seal(secret, _label(job.id, name))}
        job.touch()
        await self.service.commit(job)
        return job

    async def remove_credentials(self, caller: Identity, ref: str, target: AuthTarget, scheme: AuthScheme) -> Job:
        job = self.service.find(caller, ref)
        job.check_modifiable()
        self.service.tokens.remove_credential(job.id, target, scheme)
        removed = job.sealed_credentials.pop(_sealed_name(target, scheme), None) if job.sealed_credentials else None
        job.touch()
        await self.service.commit(job)
        if removed is not None:  # the save overwrote it (secure_delete); the WAL's copy goes too
            await self.service.store.checkpoint()
        return job


def http_auth(service: JobService, job: Job, url: str, proxy: ProxyRoute | None = None) -> ChallengeAuth:
    """Answers url's origin's challenges, and its proxy's: the job's own credentials (SERVER or PROXY target),
    else the network identity's ~/.netrc entry for that host (the helper's with NETWORK, else the owner's);
    Negotiate with the job's NEGOTIATE credentials, else that identity's Kerberos tickets; NTLM with the
    job's NTLM credentials only."""
    proxy_lookup = None if proxy is None else _proxy_lookup(service, job, proxy)
    return ChallengeAuth(url, _lookup(service, job, urlsplit(url).hostname or ""), proxy_lookup,
                         _contexts(service, job))


def smb_credential(service: JobService, job: Job) -> SmbLogon:
    """An SMB share's logon: the job's SERVER credentials (user, password, "ntlm" or "negotiate"), else the
    network identity's Kerberos ticket, through a context in that identity's broker (its session key signs)."""
    for scheme, protocol in ((AuthScheme.NTLM, "ntlm"), (AuthScheme.NEGOTIATE, "negotiate")):
        found = service.tokens.credential(job.id, AuthTarget.SERVER, scheme)
        if found is not None:
            return found.username, found.password, protocol
    files = service.broker.files_for(service.acting_identity(job, TokenFlags.NETWORK, ErrorContext.REMOTE_FILE))
    return lambda host: BrokerContext(files, "negotiate", host, None, service=SMB_SERVICE)


class BrokerContext:
    """A Negotiate or NTLM client context living in a file broker (identity/gss.py), as the broker's identity."""

    def __init__(self, files: LocalFiles, protocol: str, host: str, credential: Credential | None, *,
                 service: str = "HTTP", binding: bytes | None = None) -> None:
        self._files, self._protocol, self._host, self._credential = files, protocol, host, credential
        self._service, self._binding = service, binding
        self._id: str | None = None
        self.complete = False
        self.continued = False

    async def step(self, token: bytes | None, final: bool = False) -> bytes | None:
        if self._id is None:
            self._id = secrets.token_hex(8)
            cred = self._credential
            out, protocol = await self._files.negotiate_start(self._id, self._protocol, self._service, self._host,
                                                              None if cred is None else cred.username,
                                                              None if cred is None else cred.password,
                                                              None if self._binding is None
                                                              else base64.b64encode(self._binding).decode())
            self.continued = protocol == "ntlm"  # NTLM's negotiate message: its challenge comes on this connection
        else:
            out, self.complete = await self._files.negotiate_step(self._id, base64.b64encode(token or b"").decode(),
                                                                  final)
            self.continued = False
        return None if out is None else base64.b64decode(out)

    async def session_key(self) -> bytes:
        """The key of the complete context (an SMB session signs with it)."""
        assert self._id is not None, "a started context"
        return base64.b64decode(await self._files.negotiate_key(self._id))

    async def close(self) -> None:
        if self._id is not None:
            with contextlib.suppress(BitsError):
                await self._files.negotiate_end(self._id)


def _contexts(service: JobService, job: Job) -> Contexts:
    async def make(scheme: str, host: str, target: AuthTarget, binding: bytes | None) -> SecurityContext | None:
        credential = service.tokens.credential(job.id, target, _CONTEXT_SCHEMES[scheme])
        if credential is None and scheme == "ntlm":
            return None  # NTLM needs a password: Linux keeps no NTLM hash of the logged-on user
        who = service.acting_identity(job, TokenFlags.NETWORK, ErrorContext.REMOTE_FILE)
        return BrokerContext(service.broker.files_for(who), scheme, host, credential, binding=binding)

    return make


def _proxy_lookup(service: JobService, job: Job, proxy: ProxyRoute) -> Lookup:
    """A preconfigured proxy URL's user:password comes after the job's own and before the netrc."""
    async def lookup(scheme: str) -> tuple[str, str] | None:
        own = service.tokens.credential(job.id, AuthTarget.PROXY, _SCHEMES[scheme])
        if own is not None:
            return own.username, own.password
        if proxy.credential is not None:
            return proxy.credential
        who = service.acting_identity(job, TokenFlags.NETWORK, ErrorContext.GENERAL_TRANSPORT)
        return await netrc_entry(service, who, proxy.url.host or "")

    return lookup


def _lookup(service: JobService, job: Job, host: str) -> Callable[[str], Awaitable[tuple[str, str] | None]]:
    async def lookup(scheme: str) -> tuple[str, str] | None:
        own = service.tokens.credential(job.id, AuthTarget.SERVER, _SCHEMES[scheme])
        if own is not None:
            return own.username, own.password
        who = service.acting_identity(job, TokenFlags.NETWORK, ErrorContext.REMOTE_FILE)
        return await netrc_entry(service, who, host)

    return lookup


async def netrc_entry(service: JobService, who: Identity, host: str) -> tuple[str, str] | None:
    """host's login and password in who's ~/.netrc, read by who's file broker (never by root)."""
    try:
        fd = await service.broker.files_for(who).open_read(os.path.join(pwd.getpwuid(who.uid).pw_dir, ".netrc"))
    except (BitsError, KeyError):
        return None
    try:
        text = os.read(fd, MAX_NETRC).decode("utf-8", "replace")
    finally:
        os.close(fd)
    parser = netrc.netrc.__new__(netrc.netrc)  # netrc parses only named files; feed it the broker's bytes
    parser.hosts, parser.macros = {}, {}
    try:
        parser._parse("~/.netrc", io.StringIO(text), False)  # noqa: SLF001
    except netrc.NetrcParseError as exc:
        log.warning("the ~/.netrc of %s is not valid (line %s); not used", who.name, exc.lineno)
        return None
    entry = parser.authenticators(host)
    return None if entry is None or not entry[0] else (entry[0], entry[2] or "")
