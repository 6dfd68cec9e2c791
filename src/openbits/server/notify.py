"""Posting a finished upload to the server application (upload-reply jobs).

notification-protocol-for-server-applications.md: by reference (1) the
application gets the paths of the upload and of where to write its reply; by
value (2) it gets the upload as the request body and answers with the reply
as the response body. Anything but 200 is the application's error, reported
to the client with the context BG_ERROR_CONTEXT_REMOTE_APPLICATION.
"""

from __future__ import annotations

import asyncio

import aiohttp
from yarl import URL

from ..errors import ErrorCode
from ..uploadprotocol import Header
from .settings import NotificationType, VirtualDirectory
from .storage import Outcome, Session


class ApplicationError(Exception):
    """The server application failed; `status` is what the client's Ack carries."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = ErrorCode.http(status)


def notification_target(setting: str, original: URL) -> URL:
    """BITSServerNotificationURL resolved against the upload URL, with the upload's query appended."""
    target = original.join(URL(setting))
    if original.query_string:
        joined = "&".join(q for q in (target.query_string, original.query_string) if q)
        target = target.with_query(joined)
    return target


async def notify_application(http: aiohttp.ClientSession, vdir: VirtualDirectory, session: Session) -> Outcome:
    """Post the complete upload to the application; its reply (if any) is kept with the session."""
    assert vdir.notification_url is not None
    target = notification_target(vdir.notification_url, URL(session.url))
    headers = {Header.ORIGINAL_REQUEST_URL: session.url}
    timeout = aiohttp.ClientTimeout(total=vdir.notification_timeout)
    try:
        if vdir.notification_type is NotificationType.BY_REFERENCE:
            headers[Header.REQUEST_DATAFILE_NAME] = session.data_name
            headers[Header.RESPONSE_DATAFILE_NAME] = session.reply_name
            async with http.post(target, headers=headers, data=b"", timeout=timeout) as resp:
                await _check(resp)
                return _outcome(resp)
        assert session.total is not None
        headers["Content-Length"] = str(session.total)
        async with http.post(target, headers=headers, data=session.data(), timeout=timeout) as resp:
            await _check(resp)
            if Header.STATIC_RESPONSE_URL not in resp.headers:
                await session.save_reply(resp.content.iter_chunked(1 << 20))
            return _outcome(resp)
    except asyncio.TimeoutError:
        raise ApplicationError(504, f"the server application at {target} did not answer in time") from None
    except aiohttp.ClientError as exc:
        raise ApplicationError(502, f"the server application at {target} is unreachable: {exc}") from None


async def _check(resp: aiohttp.ClientResponse) -> None:
    if resp.status != 200:
        text = (await resp.content.read(512)).decode("utf-8", "replace")
        raise ApplicationError(resp.status, f"the server application answered {resp.status}: {text}")


def _outcome(resp: aiohttp.ClientResponse) -> Outcome:
    return Outcome(
        static_reply_url=resp.headers.get(Header.STATIC_RESPONSE_URL),
        copy_to_destination=Header.COPY_FILE_TO_DESTINATION in resp.headers,
    )
