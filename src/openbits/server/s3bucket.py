"""The S3 calls of the object-storage store (s3.py), each failing as a 503 Ack when the store does not answer,
the streamed request bodies that carry a fragment into them without a copy, and objects served back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ErrorCode
from .acks import AckError
from .settings import ObjectStorage

T = TypeVar("T")

#: S3's smallest part but the last.
PART_MIN = 5 << 20
#: S3's largest UploadPartCopy range and single PUT.
COPY_MAX = 5 << 30
#: Parts of one assembly in flight at once.
PARTS_IN_FLIGHT = 4
#: Parts joined through this node at once, whatever the sessions closing: the memory they take is
#: JOINS_IN_FLIGHT x JOIN_READ, however many sessions close together.
JOINS_IN_FLIGHT = 16
JOIN_READ = 256 << 10
#: Keys one DeleteObjects takes at most.
DELETE_MAX = 1000


def client_config(storage: ObjectStorage) -> Config:
    """Path-style, payload unsigned (a fragment streams into its PUT instead of being hashed first), no
    flexible checksums (not every S3-compatible store knows them), no retries of a streamed body."""
    return Config(
        region_name=storage.region,
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "total_max_attempts": 2},
        max_pool_connections=storage.connections,
        connect_timeout=5,
        read_timeout=60,
    )


async def open_client(storage: ObjectStorage, stack: AsyncExitStack) -> Any:
    """An aiobotocore S3 client, closed with `stack`."""
    client = await stack.enter_async_context(get_session().create_client(
        "s3", endpoint_url=storage.endpoint, aws_access_key_id=storage.access_key_id,
        aws_secret_access_key=storage.secret_access_key, config=client_config(storage)))
    client.meta.events.register("before-sign.s3.DeleteObjects", _content_md5)
    return client


def _content_md5(request: Any, **kwargs: Any) -> None:
    """DeleteObjects with a Content-MD5, which S3 requires of it and Swift's s3api checks (botocore now sends
    a CRC32 instead, which older stores ignore)."""
    request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(request.body).digest()).decode()


def unavailable(exc: BaseException) -> AckError:
    """503: the store did not answer; the client retries the packet later (5xx is transient to BITS)."""
    return AckError(503, ErrorCode.http(503), f"the object store is unavailable ({type(exc).__name__}); retry later")


async def guarded(call: Awaitable[T]) -> T:
    """A store call whose failure becomes a 503 Ack (missing keys are the caller's business: ClientError)."""
    try:
        return await call
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500) >= 500:
            raise unavailable(exc) from exc
        raise
    except (BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        raise unavailable(exc) from exc


def is_missing(exc: ClientError) -> bool:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404 or \
        exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    modified: float


class Bucket:
    """The few S3 calls the store needs, each failing as a 503 Ack when the store does not answer."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name
        self._joins = asyncio.Semaphore(JOINS_IN_FLIGHT)

    async def put(self, key: str, body: bytes | Streamed, length: int | None = None,
                  metadata: dict[str, str] | None = None) -> None:
        args: dict[str, Any] = {"Bucket": self.name, "Key": key, "Body": body}
        if length is not None:
            args["ContentLength"] = length
        if metadata:
            args["Metadata"] = metadata
        await guarded(self.client.put_object(**args))

    async def read(self, key: str) -> bytes | None:
        try:
            answer = await guarded(self.client.get_object(Bucket=self.name, Key=key))
            async with answer["Body"] as body:
                return await guarded(body.read())
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise unavailable(exc) from exc

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        """An object's bytes as they arrive."""
        answer = await guarded(self.client.get_object(Bucket=self.name, Key=key))
        async with answer["Body"] as body:
            while chunk := await guarded(body.read(1 << 20)):
                yield chunk

    async def serve(self, request: web.Request, key: str) -> web.StreamResponse:
        """An object as the answer to a GET or HEAD of it, with its Range if the request has one."""
        args: dict[str, Any] = {"Bucket": self.name, "Key": key}
        if "Range" in request.headers:
            args["Range"] = request.headers["Range"]
        try:
            answer = await guarded(self.client.get_object(**args))
        except ClientError as exc:
            if is_missing(exc):
                raise web.HTTPNotFound(text="no such reply\n") from None
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                raise web.HTTPRequestRangeNotSatisfiable() from None
            raise
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if "ContentRange" in answer:
            headers["Content-Range"] = answer["ContentRange"]
        response = web.StreamResponse(status=206 if "ContentRange" in answer else 200, headers=headers)
        response.content_length = answer["ContentLength"]
        await response.prepare(request)
        async with answer["Body"] as body:
            if request.method != "HEAD":
                while chunk := await guarded(body.read(1 << 20)):
                    await response.write(chunk)
        await response.write_eof()
        return response

    async def head(self, key: str) -> dict[str, Any] | None:
        try:
            return await guarded(self.client.head_object(Bucket=self.name, Key=key))
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise unavailable(exc) from exc

    async def list(self, prefix: str) -> list[Listed]:
        out: list[Listed] = []
        args = {"Bucket": self.name, "Prefix": prefix}
        while True:
            page = await guarded(self.client.list_objects_v2(**args))
            out += [Listed(o["Key"], o["Size"], o["LastModified"].timestamp()) for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return out
            args["ContinuationToken"] = page["NextContinuationToken"]

    async def delete(self, keys: list[str]) -> None:
        """One DeleteObjects a thousand keys (a key already gone is deleted)."""
        for at in range(0, len(keys), DELETE_MAX):
            batch = {"Objects": [{"Key": k} for k in keys[at:at + DELETE_MAX]], "Quiet": True}
            answer = await guarded(self.client.delete_objects(Bucket=self.name, Delete=batch))
            failed = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                raise unavailable(OSError(f"deleting {failed[0].get('Key')}: {failed[0].get('Code')}"))

    async def assemble(self, key: str, segments: list[tuple[str, int, int]], total: int, max_parts: int,
                       metadata: dict[str, str]) -> None:
        """Make `key` the concatenation of (source key, offset, length) segments, atomically (multipart)."""
        if total == 0:
            await self.put(key, b"", 0, metadata)
            return
        plan = plan_parts(segments, max(PART_MIN, math.ceil(total / (max_parts - 1))))
        upload = await self.start_upload(key, metadata)
        try:
            await self.complete(key, upload, await self.fill(key, upload, list(enumerate(plan, 1))))
        except BaseException:
            await self.abort(key, upload)
            raise

    async def start_upload(self, key: str, metadata: dict[str, str]) -> str:
        started = await guarded(self.client.create_multipart_upload(Bucket=self.name, Key=key, Metadata=metadata))
        return str(started["UploadId"])

    async def fill(self, key: str, upload: str, plan: list[tuple[int, list[tuple[str, int, int]]]]) -> list[dict[str, Any]]:
        """Upload the numbered parts of `plan`, each the concatenation of its (source key, offset, length)
        segments: one segment is copied inside the store, several are joined by this node as they stream
        through it (a part held whole was 2 slots of memory per part in flight, per session closing)."""
        gate = asyncio.Semaphore(PARTS_IN_FLIGHT)

        async def part(number: int, pieces: list[tuple[str, int, int]]) -> dict[str, Any]:
            async with gate:
                common = {"Bucket": self.name, "Key": key, "UploadId": upload, "PartNumber": number}
                if len(pieces) == 1:
                    source, first, length = pieces[0]
                    done = await guarded(self.client.upload_part_copy(
                        **common, CopySource={"Bucket": self.name, "Key": source},
                        CopySourceRange=f"bytes={first}-{first + length - 1}"))
                    return {"PartNumber": number, "ETag": done["CopyPartResult"]["ETag"]}
                async with self._joins:
                    done = await guarded(self.client.upload_part(**common, Body=Streamed(self.ranges(pieces)),
                                                                 ContentLength=sum(p[2] for p in pieces)))
                return {"PartNumber": number, "ETag": done["ETag"]}

        return list(await asyncio.gather(*(part(n, p) for n, p in plan)))

    async def put_part(self, key: str, upload: str, number: int, body: Streamed, length: int) -> str:
        """Upload one part; its ETag."""
        done = await guarded(self.client.upload_part(Bucket=self.name, Key=key, UploadId=upload, PartNumber=number,
                                                     Body=body, ContentLength=length))
        return str(done["ETag"])

    async def uploaded_parts(self, key: str, upload: str) -> dict[int, str]:
        """Part number -> ETag of the parts an upload has."""
        out: dict[int, str] = {}
        args: dict[str, Any] = {"Bucket": self.name, "Key": key, "UploadId": upload}
        while True:
            page = await guarded(self.client.list_parts(**args))
            out.update({p["PartNumber"]: p["ETag"] for p in page.get("Parts", [])})
            if not page.get("IsTruncated"):
                return out
            args["PartNumberMarker"] = page["NextPartNumberMarker"]

    async def complete(self, key: str, upload: str, parts: list[dict[str, Any]]) -> None:
        parts = sorted(parts, key=lambda p: p["PartNumber"])
        await guarded(self.client.complete_multipart_upload(Bucket=self.name, Key=key, UploadId=upload,
                                                            MultipartUpload={"Parts": parts}))

    async def abort(self, key: str, upload: str) -> None:
        """Abort an upload, if the store answers (an upload left behind is clean-up's)."""
        with contextlib.suppress(Exception):
            await self.client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload)

    async def ranges(self, segments: list[tuple[str, int, int]]) -> AsyncIterator[bytes]:
        """The bytes of (key, offset, length) segments one after the other, as they arrive."""
        for key, first, length in segments:
            try:
                answer = await guarded(self.client.get_object(Bucket=self.name, Key=key,
                                                              Range=f"bytes={first}-{first + length - 1}"))
            except ClientError as exc:  # gone: the session ended meanwhile (its packet finds out)
                raise unavailable(exc) from exc
            got = 0
            async with answer["Body"] as body:
                while chunk := await guarded(body.read(JOIN_READ)):
                    got += len(chunk)
                    yield chunk
            if got != length:
                raise unavailable(EOFError(f"{key}: {got} of {length} bytes"))

    async def abort_stale_uploads(self, prefix: str, before: float, live: set[str]) -> int:
        """Abort multipart uploads under `prefix` started before `before` but the `live` ones (a node died
        while assembling, or a session's upload outlived it)."""
        aborted = 0
        args = {"Bucket": self.name, "Prefix": prefix}
        while True:
            page = await guarded(self.client.list_multipart_uploads(**args))
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < before and upload["UploadId"] not in live:
                    await guarded(self.client.abort_multipart_upload(Bucket=self.name, Key=upload["Key"],
                                                                     UploadId=upload["UploadId"]))
                    aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            args.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])


def plan_parts(segments: list[tuple[str, int, int]], target: int) -> list[list[tuple[str, int, int]]]:
    """Multipart parts from ordered segments: a segment of at least `target` bytes is copied alone (inside
    the store); smaller ones are joined (through this node) into parts of exactly `target`, filled from
    the head of the next segment if need be. Every part but the last has `target` bytes or more, so there
    are at most total/target + 1 of them."""
    parts: list[list[tuple[str, int, int]]] = []
    group: list[tuple[str, int, int]] = []
    size = 0
    for key, first, length in segments:
        while length:
            if not group and length >= target:
                take = min(length, COPY_MAX)
                parts.append([(key, first, take)])
            else:
                take = min(length, target - size)
                group.append((key, first, take))
                size += take
                if size >= target:
                    parts.append(group)
                    group, size = [], 0
            first, length = first + take, length - take
    if group:
        parts.append(group)
    return parts


async def chained(*sources: AsyncIterator[bytes | memoryview]) -> AsyncIterator[bytes | memoryview]:
    """The chunks of each source in turn."""
    for source in sources:
        async for chunk in source:
            yield chunk


class Streamed:
    """A request body for botocore that aiohttp streams from `chunks` (the caller gives the length).

    botocore only checks that a body has read(); aiohttp sends any async iterable. A store that fails
    mid-body cannot be retried with it (botocore cannot rewind), and the client retries the packet.
    """

    def __init__(self, chunks: AsyncIterator[bytes | memoryview]) -> None:
        self._chunks = chunks

    def read(self, *args: object) -> bytes:
        raise TypeError("streamed bodies are sent by aiohttp, not read")

    def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        return self._chunks


class FragmentBody:
    """A fragment's body read in exact slices: skip what the session has, then one slice per piece."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks = chunks.__aiter__()
        self._left = memoryview(b"")
        self.short = False
        #: Set when a take() is read to its end: the reader may go on to the next slice.
        self._taken = asyncio.Event()

    async def _next(self) -> memoryview:
        if not self._left:
            try:
                self._left = memoryview(await self._chunks.__anext__())
            except StopAsyncIteration:
                self.short = True
                raise EOFError("the fragment body ended early") from None
        return self._left

    async def take(self, length: int) -> AsyncIterator[memoryview]:
        while length:
            chunk = (await self._next())[:length]
            self._left = self._left[len(chunk):]
            length -= len(chunk)
            yield chunk  # aiohttp writes memoryviews: no copy
        self._taken.set()  # only read to its end: a slice given up leaves the body mid-slice

    async def overlapped(self, put: Awaitable[T]) -> asyncio.Future[T]:
        """`put`, whose body is this reader's next take(), run until that body is read (or `put` ends):
        the store's answer comes later, while the next slice streams, so a fragment of several parts
        waits for one part's commit, not for each (Swift's fsync and container update of every part)."""
        self._taken.clear()
        task, read = asyncio.ensure_future(put), asyncio.ensure_future(self._taken.wait())
        try:
            await asyncio.wait((task, read), return_when=asyncio.FIRST_COMPLETED)
        finally:
            read.cancel()
        if not self._taken.is_set():  # it ended with its body not read to the end: the next slices would be off
            task.result()
            raise RuntimeError("the store answered a part before its body was sent")
        return task

    async def skip(self, length: int) -> None:
        async for _ in self.take(length):
            pass


async def gather_parts(sending: list[tuple[int, int, asyncio.Future[str]]], parts: list[tuple[int, int, str]], *,
                      failed: bool = False) -> None:
    """The parts a fragment sent (FragmentBody.overlapped), into `parts` (first, end, ETag) as the store
    takes them; the first failure is raised once all have ended (after another failure, with `failed`,
    none is)."""
    outcomes = await asyncio.gather(*(f for _, _, f in sending), return_exceptions=True)
    error: BaseException | None = None
    for (low, stop, _), outcome in zip(sending, outcomes):
        if isinstance(outcome, BaseException):
            error = error or outcome
        else:
            parts.append((low, stop, outcome))
    sending.clear()
    if error is not None and not failed:
        raise error
