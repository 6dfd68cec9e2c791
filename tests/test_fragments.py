"""A fragment's size and body (transport/fragments.py): the limit a server tells, and a body read from the file."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from openbits.transport.fragments import MAX_FRAGMENT, FileBody, FragmentSizer, aligned, fragment_limit
from openbits.uploadprotocol import LEGACY_FRAGMENT_LIMIT, Header


@pytest.mark.parametrize(("said", "limit"), [
    (None, LEGACY_FRAGMENT_LIMIT),  # IIS and any server that says nothing: under its 30,000,000-byte default
    ("268435456", 256 << 20),
    (" 1048576 ", 1 << 20),
    (str(4 << 30), MAX_FRAGMENT),  # never more than the client's own bound
    ("0", LEGACY_FRAGMENT_LIMIT),
    ("-5", LEGACY_FRAGMENT_LIMIT),
    ("lots", LEGACY_FRAGMENT_LIMIT),
])
def test_the_fragment_limit_is_what_the_server_says_within_bounds(said: str | None, limit: int) -> None:
    assert fragment_limit({} if said is None else {Header.FRAGMENT_LIMIT: said}) == limit


def test_the_sizer_grows_to_the_limit_and_no_further() -> None:
    sizer = FragmentSizer(1 << 20, 64 << 20)
    for _ in range(6):
        sizer.measured(sizer.size, 0.001)  # a link far faster than any fragment
    assert sizer.size == 64 << 20
    small = FragmentSizer(1 << 20, 32 * 1024)  # a server that asks for less than the usual smallest
    assert small.size == 32 * 1024
    small.measured(32 * 1024, 0.001)
    assert small.size == 32 * 1024
    assert aligned(16 << 20, 256 << 20, 1 << 30) == 240 << 20  # ends on a multiple of 256 MiB


class _Writer:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(bytes(chunk))


def test_a_file_body_is_read_in_pieces_and_can_be_sent_again(tmp_path: Path) -> None:
    """Read from the file as it is written (no fragment-sized buffer), and afresh when a challenge's next
    leg sends the request again."""
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(1) as reads:
            body = FileBody(reads, fd, 7, len(data) - 7)
            assert body.size == len(data) - 7
            for _ in range(2):
                writer = _Writer()
                asyncio.run(body.write_with_length(writer, None))  # type: ignore[arg-type]
                assert b"".join(writer.chunks) == data[7:]
                assert max(len(c) for c in writer.chunks) <= 1 << 20
            assert body.sent is not None
            os.truncate(path, 1000)
            with pytest.raises(EOFError, match="shorter"):
                asyncio.run(body.write_with_length(_Writer(), None))  # type: ignore[arg-type]
    finally:
        os.close(fd)
