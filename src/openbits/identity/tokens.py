"""Secrets of jobs in this process's memory: helper identities, one-time tickets, per-job credentials,
client certificate passphrases.

Helper identities and tickets never reach disk (a daemon restart forgets them, as BITS forgets a
helper token at log-off); the job record keeps only the helper token *flags*. Per-job credentials
are also kept sealed with the job (core/tokens.py, identity/sealing.py), and come back from there
after a restart.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from ..enums import AuthScheme, AuthTarget
from ..model.identity import Identity

#: How long a ticket from `gettokenticket` may be redeemed: a helper process redeems it at once.
TICKET_LIFETIME = 60.0
#: Unredeemed tickets one user may hold at once (a ticket is memory the daemon keeps for them)
MAX_TICKETS_PER_USER = 16


@dataclass(frozen=True)
class Credential:
    """SetCredentials' user name and password; the repr never shows the password."""

    username: str
    password: str = field(repr=False)


def split_userinfo(url: str) -> tuple[str, Credential | None]:
    """`http://user:password@host/x` -> (`http://host/x`, the credential): the user information of a URL
    becomes the job's server credentials (memory only) and never reaches the store, `info` or a log. A name
    that is no URL at all is left as it is, for AddFile's check to say what is wrong with it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), Credential(unquote(user), unquote(password))


@dataclass(frozen=True)
class Ticket:
    """The owner's permission, given in advance, for another process to become the job's helper."""

    job_id: str
    #: whether the owner who asked for it may attach an administrator as the helper
    issuer_is_admin: bool
    expires: float
    #: who asked for it: the helper it makes counts as set from their session
    issuer: int


class TokenStore:
    """Per job id: the helper identity and the credentials; per ticket: the job it opens."""

    def __init__(self) -> None:
        self._helpers: dict[str, Identity] = {}
        #: the uid whose session set each helper: the token goes when they log off (core/logons.py)
        self._helper_set_by: dict[str, int] = {}
        self._credentials: dict[str, dict[tuple[AuthTarget, AuthScheme], Credential]] = {}
        #: in order of issue, which is the order of expiry (one lifetime for all)
        self._tickets: dict[str, Ticket] = {}
        self._passphrases: dict[str, str] = {}
        #: per issuer, their live tickets in order of issue: the 17th voids the oldest
        self._held: dict[int, dict[str, None]] = {}
        self._by_job: dict[str, set[str]] = {}

    def helper(self, job_id: str) -> Identity | None:
        return self._helpers.get(job_id)

    def set_helper(self, job_id: str, helper: Identity, set_by: int) -> None:
        self._helpers[job_id] = helper
        self._helper_set_by[job_id] = set_by

    def clear_helper(self, job_id: str) -> None:
        self._helpers.pop(job_id, None)
        self._helper_set_by.pop(job_id, None)

    def drop_helpers(self, gone: Callable[[int], bool]) -> list[str]:
        """Drop the helpers set by a uid for which `gone(uid)` (logged off); the ids of their jobs."""
        dropped = [job_id for job_id, uid in self._helper_set_by.items() if gone(uid)]
        for job_id in dropped:
            self.clear_helper(job_id)
        return dropped

    def credential(self, job_id: str, target: AuthTarget, scheme: AuthScheme) -> Credential | None:
        return self._credentials.get(job_id, {}).get((target, scheme))

    def set_credential(self, job_id: str, target: AuthTarget, scheme: AuthScheme, credential: Credential) -> None:
        self._credentials.setdefault(job_id, {})[(target, scheme)] = credential

    def remove_credential(self, job_id: str, target: AuthTarget, scheme: AuthScheme) -> bool:
        """False when none was set for that pair (BITS's S_FALSE)."""
        return self._credentials.get(job_id, {}).pop((target, scheme), None) is not None

    def passphrase(self, job_id: str) -> str | None:
        """The passphrase of the job's client certificate key, if it has one."""
        return self._passphrases.get(job_id)

    def set_passphrase(self, job_id: str, passphrase: str | None) -> None:
        if passphrase is None:
            self._passphrases.pop(job_id, None)
        else:
            self._passphrases[job_id] = passphrase

    def issue_ticket(self, job_id: str, issuer: int, issuer_is_admin: bool) -> str:
        """A new ticket for job_id; constant time (expired ones go first, oldest first). An issuer holding
        MAX_TICKETS_PER_USER loses their oldest: one who fetches token_options() for many jobs in a minute
        is served, and what one user holds stays bounded."""
        now = time.monotonic()
        while self._tickets:
            oldest = next(iter(self._tickets))
            if self._tickets[oldest].expires > now:
                break
            self._drop(oldest)
        if len(self._held.get(issuer, ())) >= MAX_TICKETS_PER_USER:
            self._drop(next(iter(self._held[issuer])))
        ticket = secrets.token_urlsafe(32)
        self._tickets[ticket] = Ticket(job_id, issuer_is_admin, now + TICKET_LIFETIME, issuer)
        self._held.setdefault(issuer, {})[ticket] = None
        self._by_job.setdefault(job_id, set()).add(ticket)
        return ticket

    def redeem_ticket(self, ticket: str, job_id: str) -> Ticket | None:
        """The ticket if it is live and opens job_id; it is used up either way once it matched."""
        found = self._tickets.get(ticket)
        if found is None or found.job_id != job_id:
            return None
        self._drop(ticket)
        return found if found.expires > time.monotonic() else None

    def _drop(self, ticket: str) -> None:
        found = self._tickets.pop(ticket)
        held = self._held[found.issuer]
        del held[ticket]
        if not held:
            del self._held[found.issuer]
        tickets = self._by_job[found.job_id]
        tickets.discard(ticket)
        if not tickets:
            del self._by_job[found.job_id]

    def forget(self, job_id: str) -> None:
        """A job in a final state keeps no secrets."""
        self.clear_helper(job_id)
        self._credentials.pop(job_id, None)
        self._passphrases.pop(job_id, None)
        for ticket in list(self._by_job.get(job_id, ())):
            self._drop(ticket)
