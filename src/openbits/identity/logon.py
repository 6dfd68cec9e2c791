"""LogonUser for Linux: a user name and password checked with PAM, rate-limited per caller.

The PAM service is `openbits` (/etc/pam.d/openbits, installed by scripts/install-pam.sh); when
that file is missing the daemon uses `login`'s configuration and says so once in its log.
Passwords are never logged, stored or echoed: only the user name, the caller and the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import pam

from ..errors import BitsError, ErrorCode
from ..model.identity import Identity
from ..ratelog import RateLimitedLog

log = logging.getLogger("openbits.logon")
#: refusals cost the caller nothing: said once per interval, however many come
_refused = RateLimitedLog(log)

PAM_SERVICE = "openbits"
FALLBACK_SERVICE = "login"
#: Failures a caller may make in a row before each further attempt waits; the wait doubles up to the cap.
FREE_FAILURES = 3
FIRST_DELAY = 5.0
MAX_DELAY = 60.0
#: Seconds after the last failure when a caller's or an account's count is forgotten
FORGET_AFTER = 900.0


def pam_check(username: str, password: str, service: str) -> bool:
    """One blocking PAM conversation (authenticate + account); True when both accept."""
    return bool(pam.pam().authenticate(username, password, service=service, resetcreds=False))


@dataclass
class _Failures:
    """Failed logons of one caller, or against one account; reserved before PAM is asked."""

    count: int = 0
    last: float = 0.0

    def wait(self, now: float) -> float:
        """Seconds before the next attempt may be checked (0: now)."""
        if self.count < FREE_FAILURES:
            return 0.0
        return self.last + min(MAX_DELAY, FIRST_DELAY * 2 ** (self.count - FREE_FAILURES)) - now


class LogonChecker:
    """Checks passwords off the event loop; a caller who keeps failing, or an account guessed at, waits.

    Each attempt reserves a failure for its caller and for its target account before PAM is asked,
    and only a success gives that one reservation back: concurrent guesses cannot all reach PAM
    before the first failure is counted, and no success (of any account) wipes the count. A caller
    has at most one PAM conversation in flight, so one user's flood holds one of the PAM pool's
    threads, never all of them. Counts are forgotten FORGET_AFTER seconds after the last failure.
    """

    def __init__(self, check: Callable[[str, str, str], bool] = pam_check, pam_dir: str = "/etc/pam.d",
                 pool: Executor | None = None) -> None:
        self._check = check
        #: where PAM runs (Pools.pam; None: the loop's default executor)
        self._pool = pool
        self._pam_dir = pam_dir
        #: per caller uid, and per target account uid (unknown names count against the caller only)
        self._callers: dict[int, _Failures] = {}
        self._targets: dict[int, _Failures] = {}
        self._in_flight: dict[int, asyncio.Lock] = {}
        self._warned = False
        #: logons refused since the daemon started (the metric openbits_logons_failed_total)
        self.failed = 0

    def _service(self) -> str:
        if os.path.exists(os.path.join(self._pam_dir, PAM_SERVICE)):
            return PAM_SERVICE
        if not self._warned:
            self._warned = True
            log.warning("%s/%s is missing; checking passwords with the %r PAM service instead "
                        "(run scripts/install-pam.sh)", self._pam_dir, PAM_SERVICE, FALLBACK_SERVICE)
        return FALLBACK_SERVICE

    def _records(self, caller: Identity, target: int | None, now: float) -> list[_Failures]:
        for table in (self._callers, self._targets):
            for key in [k for k, f in table.items() if now - f.last > FORGET_AFTER]:
                del table[key]
        records = [self._callers.setdefault(caller.uid, _Failures())]
        if target is not None:
            records.append(self._targets.setdefault(target, _Failures()))
        return records

    async def logon(self, caller: Identity, username: str, password: str) -> Identity:
        """The identity of username if password is right; ERROR_LOGON_FAILURE otherwise."""
        lock = self._in_flight.setdefault(caller.uid, asyncio.Lock())
        try:
            async with lock:
                return await self._logon(caller, username, password)
        finally:
            if not lock.locked() and self._in_flight.get(caller.uid) is lock:
                del self._in_flight[caller.uid]

    async def _logon(self, caller: Identity, username: str, password: str) -> Identity:
        try:
            uid: int | None = pwd.getpwnam(username).pw_uid
        except (KeyError, ValueError):
            uid = None
        now = time.monotonic()
        records = self._records(caller, uid, now)
        wait = max(record.wait(now) for record in records)
        if wait > 0:
            self.failed += 1
            _refused("logon as %r by uid %d refused: too many failed logons in a row", username, caller.uid)
            raise BitsError(ErrorCode.ERROR_LOGON_FAILURE,
                            f"too many failed logons in a row (by you or for {username!r}); try again in {wait:.0f} s")
        for record in records:
            record.count += 1
            record.last = now
        log.debug("PAM check for uid %d started", caller.uid)
        try:
            ok = uid is not None and "\0" not in password and await asyncio.get_running_loop().run_in_executor(
                self._pool, self._check, username, password, self._service())
        finally:
            log.debug("PAM check for uid %d ended", caller.uid)
        if not ok or uid is None:
            self.failed += 1
            for record in records:
                record.last = time.monotonic()  # the delay runs from the answer, not from the question
            log.warning("logon as %r by uid %d failed (%d in a row)", username, caller.uid, records[0].count,
                        extra={"openbits_user": caller.uid, "openbits_error": "ERROR_LOGON_FAILURE"})
            raise BitsError(ErrorCode.ERROR_LOGON_FAILURE,
                            f"logon failure: unknown user name {username!r} or bad password")
        for record in records:
            record.count -= 1  # only this attempt's reservation: earlier failures stay counted
        log.info("logon as %r by uid %d succeeded", username, caller.uid, extra={"openbits_user": caller.uid})
        return Identity.from_uid(uid)
