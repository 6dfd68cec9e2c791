"""HTTP+JSON to the daemon over its Unix socket: one aiohttp session, error bodies back into BitsError."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from ..errors import BitsError, ErrorCode
from ..peer import peer_credentials
from .discovery import DaemonUnavailableError

M = TypeVar("M", bound=BaseModel)

#: The host part is ignored by the daemon; aiohttp needs one to build a URL.
_BASE_URL = "http://openbits"
#: Ordinary calls answer at once; anything slower than this means the daemon is stuck.
DEFAULT_TIMEOUT = 60.0
_JSON = {"Content-Type": "application/json"}


class _DaemonConnector(aiohttp.UnixConnector):
    """A Unix connector that talks only to a daemon run by root or by this user (SO_PEERCRED).

    Checked on every new connection before a byte is sent: whoever squatted the socket's path
    never receives a request, so never a password (setcredentials, settoken, logon).
    """

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        proto = await super()._create_connection(req, traces, timeout)
        sock = proto.transport.get_extra_info("socket") if proto.transport is not None else None
        uid = peer_credentials(sock).uid if sock is not None else -1
        if uid not in (0, os.geteuid()):
            proto.close()
            raise DaemonUnavailableError(f"the daemon on {self.path} runs as uid {uid}, neither root nor you "
                                         f"(uid {os.geteuid()}); not talking to it")
        return proto


class Connection:
    """One client session with one daemon. Create and close it on the event loop that uses it."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._session = aiohttp.ClientSession(
            base_url=_BASE_URL,
            connector=_DaemonConnector(path=str(socket_path)),
            timeout=aiohttp.ClientTimeout(total=DEFAULT_TIMEOUT),
        )

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        model: type[M],
        *,
        body: BaseModel | None = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> M:
        """Send one API call and parse its answer as `model`; a refusal raises the daemon's BitsError."""
        # JSON bytes straight from pydantic, and the answer's bytes straight back to it: aiohttp's json=
        # and text() cost a third of the client's time per call
        payload = None if body is None else body.model_dump_json(exclude_unset=True).encode()
        extra = {} if timeout is None else {"timeout": aiohttp.ClientTimeout(total=timeout)}
        try:
            async with self._session.request(method, path, data=payload, params=params,
                                             headers=None if payload is None else _JSON,
                                             **extra) as response:
                raw = await response.read()
                status = response.status
        except aiohttp.ClientConnectionError as exc:
            raise DaemonUnavailableError(f"cannot talk to the openbits daemon on {self.socket_path}: {exc}") from exc
        except asyncio.TimeoutError as exc:
            raise DaemonUnavailableError(f"the openbits daemon on {self.socket_path} did not answer in time") from exc
        if status >= 400:
            raise _refusal(status, raw.decode(errors="replace"))
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise BitsError(ErrorCode.E_FAIL, f"unexpected answer from the daemon to {method} {path}: {exc}") from exc


    @contextlib.asynccontextmanager
    async def stream(self, path: str, params: dict[str, str]) -> AsyncIterator[aiohttp.StreamReader]:
        """A long-lived GET (the event stream): its body as it arrives; no total timeout."""
        try:
            async with self._session.get(path, params=params, timeout=aiohttp.ClientTimeout(total=None)) as response:
                if response.status >= 400:
                    raise _refusal(response.status, await response.text())
                yield response.content
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:  # a daemon that died mid-stream
            raise DaemonUnavailableError(f"lost the openbits daemon on {self.socket_path}: {exc}") from exc


def _refusal(status: int, text: str) -> BitsError:
    """The BitsError an error answer carries; a body without one (a daemon bug, a proxy) becomes E_FAIL."""
    try:
        return BitsError.from_dict(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return BitsError(ErrorCode.E_FAIL, f"the daemon answered HTTP {status}: {' '.join(text.split())[:200]}")
