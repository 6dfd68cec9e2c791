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

log = logging.getLogger("openbits.logon")

PAM_SERVICE = "openbits"
FALLBACK_SERVICE = "login"
#: Failures a caller may make in a row before each further attempt waits; the wait doubles up to the cap.
FREE_FAILURES = 3
FIRST_DELAY = 5.0
MAX_DELAY = 60.0


def pam_check(username: str, password: str, service: str) -> bool:
    """One blocking PAM conversation (authenticate + account); True when both accept."""
    return bool(pam.pam().authenticate(username, password, service=service, resetcreds=False))


@dataclass
class _Failures:
    count: int = 0
    not_before: float = 0.0


class LogonChecker:
    """Checks passwords off the event loop; a caller who keeps failing is made to wait."""

    def __init__(self, check: Callable[[str, str, str], bool] = pam_check, pam_dir: str = "/etc/pam.d",
                 pool: Executor | None = None) -> None:
        self._check = check
        #: where PAM runs (Pools.pam; None: the loop's default executor)
        self._pool = pool
        self._pam_dir = pam_dir
        self._failures: dict[int, _Failures] = {}
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

    async def logon(self, caller: Identity, username: str, password: str) -> Identity:
        """The identity of username if password is right; ERROR_LOGON_FAILURE otherwise."""
        failures = self._failures.setdefault(caller.uid, _Failures())
        wait = failures.not_before - time.monotonic()
        if wait > 0:
            self.failed += 1
            log.warning("logon as %r by uid %d refused: %d failed logons in a row", username, caller.uid,
                        failures.count, extra={"openbits_user": caller.uid, "openbits_error": "ERROR_LOGON_FAILURE"})
            raise BitsError(ErrorCode.ERROR_LOGON_FAILURE,
                            f"too many failed logons in a row; try again in {wait:.0f} s")
        try:
            uid = pwd.getpwnam(username).pw_uid
        except (KeyError, ValueError):
            uid = None
        ok = uid is not None and "\0" not in password and await asyncio.get_running_loop().run_in_executor(
            self._pool, self._check, username, password, self._service())
        if not ok or uid is None:
            self.failed += 1
            failures.count += 1
            if failures.count >= FREE_FAILURES:
                delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (failures.count - FREE_FAILURES))
                failures.not_before = time.monotonic() + delay
            log.warning("logon as %r by uid %d failed (%d in a row)", username, caller.uid, failures.count,
                        extra={"openbits_user": caller.uid, "openbits_error": "ERROR_LOGON_FAILURE"})
            raise BitsError(ErrorCode.ERROR_LOGON_FAILURE,
                            f"logon failure: unknown user name {username!r} or bad password")
        self._failures.pop(caller.uid, None)
        log.info("logon as %r by uid %d succeeded", username, caller.uid, extra={"openbits_user": caller.uid})
        return Identity.from_uid(uid)
