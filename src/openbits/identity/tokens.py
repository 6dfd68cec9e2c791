"""Secrets of jobs that must never reach disk: helper identities, one-time tickets, per-job credentials,
client certificate passphrases.

They live in this process's memory only (a daemon restart forgets them, as BITS forgets a helper
token at log-off); the job record keeps only the helper token *flags*.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from ..enums import AuthScheme, AuthTarget
from ..model.identity import Identity

#: How long a ticket from `gettokenticket` may be redeemed.
TICKET_LIFETIME = 600.0




@dataclass(frozen=True)
class Credential:
    """SetCredentials' user name and password; the repr never shows the password."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Ticket:
    """The owner's permission, given in advance, for another process to become the job's helper."""

    job_id: str
    #: whether the owner who asked for it may attach an administrator as the helper
    issuer_is_admin: bool
    expires: float


class TokenStore:
    """Per job id: the helper identity and the credentials; per ticket: the job it opens."""

    def __init__(self) -> None:
        self._helpers: dict[str, Identity] = {}
        self._credentials: dict[str, dict[tuple[AuthTarget, AuthScheme], Credential]] = {}
        self._tickets: dict[str, Ticket] = {}
        self._passphrases: dict[str, str] = {}

    def helper(self, job_id: str) -> Identity | None:
        return self._helpers.get(job_id)

    def set_helper(self, job_id: str, helper: Identity) -> None:
        self._helpers[job_id] = helper

    def clear_helper(self, job_id: str) -> None:
        self._helpers.pop(job_id, None)

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

    def issue_ticket(self, job_id: str, issuer_is_admin: bool) -> str:
        now = time.monotonic()
        self._tickets = {key: t for key, t in self._tickets.items() if t.expires > now}
        ticket = secrets.token_urlsafe(32)
        self._tickets[ticket] = Ticket(job_id, issuer_is_admin, now + TICKET_LIFETIME)
        return ticket

    def redeem_ticket(self, ticket: str, job_id: str) -> Ticket | None:
        """The ticket if it is live and opens job_id; it is used up either way once it matched."""
        found = self._tickets.get(ticket)
        if found is None or found.job_id != job_id:
            return None
        del self._tickets[ticket]
        return found if found.expires > time.monotonic() else None

    def forget(self, job_id: str) -> None:
        """A job in a final state keeps no secrets."""
        self._helpers.pop(job_id, None)
        self._credentials.pop(job_id, None)
        self._passphrases.pop(job_id, None)
        self._tickets = {key: t for key, t in self._tickets.items() if t.job_id != job_id}
