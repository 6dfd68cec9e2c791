"""Metalink (RFC 5854): `openbits addmetalink` against a real daemon and the fault-injecting server: a file's
mirrors by priority, failover on a dying mirror keeping the bytes, a wrong mirror's bytes re-fetched from the
next, a corrupt piece fetched again alone, digests and sizes checked; and the parser's refusals (entity
attacks included)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from openbits import JobState
from openbits.model.metalink import MetalinkError, parse_metalink

from .cli import Cli
from .daemon import DaemonProcess
from .servers.faulty import FaultyServer, content, sha256
from .waiting import wait_state

NS = "urn:ietf:params:xml:ns:metalink"


def meta4(*files: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="{NS}">{"".join(files)}</metalink>'.encode()


def file_entry(name: str, urls: list[tuple[str, int | None]], size: int | None = None, sha: str | None = None) -> str:
    parts = [f"<size>{size}</size>" if size is not None else "", f'<hash type="sha-256">{sha}</hash>' if sha else ""]
    parts += [f'<url{"" if p is None else f" priority={chr(34)}{p}{chr(34)}"}>{u.replace("&", "&amp;")}</url>'
              for u, p in urls]
    return f'<file name="{name}">{"".join(parts)}</file>'


@pytest.fixture
def cli(daemon: DaemonProcess) -> Cli:
    return Cli(daemon.socket, daemon.env)


# ---------------------------------------------------------------- the parser


def test_mirrors_by_priority_digests_and_sizes() -> None:
    doc = meta4(file_entry("a/b.iso", [("ftp://old.example/b.iso", 1), ("http://two.example/b.iso", 2),
                                       ("https://one.example/b.iso", 1), ("http://last.example/b.iso", None)],
                           size=1234, sha="AB" * 32)
                + f'<file name="c.bin"><hash type="md5">00</hash><hash type="sha-512">{"cd" * 64}</hash>'
                  '<pieces length="1024" type="sha-256"><hash>ignored</hash></pieces>'
                  '<url>http://x.example/c.bin</url></file>')
    first, second = parse_metalink(doc, "t.meta4")
    assert first.name == "a/b.iso" and first.size == 1234 and first.checksums == ["sha256:" + "ab" * 32]
    assert first.mirrors == ["https://one.example/b.iso", "http://two.example/b.iso", "http://last.example/b.iso"]
    assert second.checksums == ["sha512:" + "cd" * 64] and second.size is None


@pytest.mark.parametrize(("doc", "complaint"), [
    (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
     b'<metalink xmlns="urn:ietf:params:xml:ns:metalink">&lol2;</metalink>', "declares a DTD, entities"),
    (b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
     b'<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="&x;"/></metalink>', "declares a DTD"),
    (b"<metalink", "not well-formed XML"),
    (b'<metalink xmlns="http://www.metalinker.org/"><files/></metalink>', "no Metalink 4 file"),
    (meta4(), "lists no <file>"),
    (meta4(file_entry("../escape", [("http://x.example/f", 1)])), "not a plain relative path"),
    (meta4(file_entry("/etc/cron.d/x", [("http://x.example/f", 1)])), "not a plain relative path"),
    (meta4(file_entry("f", [("ftp://x.example/f", 1)])), "no <url> openbits can download from"),
    (meta4(file_entry("f", [("http://x.example/f", 0)])), "priority 0 is outside"),
    (meta4(file_entry("f", [("http://x.example/f", 1)]).replace(
        "<url", '<pieces length="x" type="sha-1"><hash>00</hash></pieces><url')), "length 'x' is not a positive"),
    (meta4(file_entry("f", [("http://x.example/f", 1)]), file_entry("f", [("http://y.example/f", 1)])), "twice"),
])
def test_bad_metalinks_are_refused_with_a_reason(doc: bytes, complaint: str) -> None:
    with pytest.raises(MetalinkError) as refused:
        parse_metalink(doc, "bad.meta4")
    assert complaint in str(refused.value)


# ---------------------------------------------------------------- against real servers


def test_a_dying_mirror_hands_over_to_the_next_keeping_its_bytes(cli: Cli, daemon: DaemonProcess,
                                                                 faulty: FaultyServer, tmp_path: Path) -> None:
    path = f"/ml/{uuid.uuid4().hex}.bin"
    size = "4m"
    dying = f"{path}?size={size}&drop=2500000"  # same bytes, cut off after 2.5 MB
    plain = f"{path}?size={size}&etag=none&lastmod=0"  # same bytes, other validators (none)
    meta = tmp_path / "set.meta4"
    meta.write_bytes(meta4(file_entry("x.bin", [(faulty.url(plain), 2), (faulty.url(dying), 1)],
                                      size=4 << 20, sha=sha256(plain))))
    (tmp_path / "out").mkdir()
    job = cli.ok("create", "metalink").strip()
    assert cli.ok("addmetalink", job, str(meta), str(tmp_path / "out")).strip() == f"added 1 file(s) from {meta}"
    with daemon.manager() as manager:
        handle = manager.get_job(job)
        assert handle.info().files[0].mirrors == [faulty.url(dying), faulty.url(plain)]
        handle.resume()
        wait_state(handle, JobState.TRANSFERRED, 60)
        handle.complete()
    assert hashlib.sha256((tmp_path / "out" / "x.bin").read_bytes()).hexdigest() == sha256(plain)
    resumed = [r.headers.get("Range", "") for r in faulty.requests if r.path_qs == plain]
    assert resumed and resumed[0].startswith("bytes=") and resumed[0] != "bytes=0-", resumed  # kept what it had
    assert "If-Range" not in next(r for r in faulty.requests if r.path_qs == plain).headers


def test_a_mirror_with_wrong_bytes_is_left_for_the_next(cli: Cli, daemon: DaemonProcess, faulty: FaultyServer,
                                                        tmp_path: Path) -> None:
    good = f"/ml/{uuid.uuid4().hex}.bin?size=300k"
    wrong = f"/ml/{uuid.uuid4().hex}.bin?size=300k"  # another file of the same size
    meta = tmp_path / "set.meta4"
    meta.write_bytes(meta4(file_entry("y.bin", [(faulty.url(wrong), 1), (faulty.url(good), 2)], sha=sha256(good))))
    job = cli.ok("create", "metalink").strip()
    cli.ok("addmetalink", job, str(meta), str(tmp_path))
    cli.ok("resume", job)
    assert cli("wait", job, "--timeout", "60").returncode == 0
    cli.ok("complete", job)
    assert (tmp_path / "y.bin").read_bytes() == content(good)


def test_every_mirror_failing_is_an_error_naming_the_last(cli: Cli, faulty: FaultyServer, tmp_path: Path) -> None:
    gone = [faulty.url(f"/ml/{uuid.uuid4().hex}?status=404") for _ in range(2)]
    short = faulty.url(f"/ml/{uuid.uuid4().hex}?size=10k")
    meta = tmp_path / "set.meta4"
    meta.write_bytes(meta4(file_entry("gone.bin", [(gone[0], 1), (gone[1], 2)]),
                           file_entry("short.bin", [(short, 1)], size=20480)))
    job = cli.ok("create", "metalink").strip()
    cli.ok("addmetalink", job, str(meta), str(tmp_path))
    cli.ok("resume", job)
    assert cli("wait", job, "--timeout", "60").returncode == 4
    error = cli.ok("geterror", job)
    assert "BG_E_HTTP_ERROR_404" in error and gone[1].split("/")[-1] in error
    cli.ok("cancel", job)
    job = cli.ok("create", "metalink size").strip()
    meta.write_bytes(meta4(file_entry("short.bin", [(short, 1)], size=20480)))
    cli.ok("addmetalink", job, str(meta), str(tmp_path))
    cli.ok("resume", job)
    assert cli("wait", job, "--timeout", "60").returncode == 4
    error = cli.ok("geterror", job)
    assert "BG_E_VALIDATION_FAILED" in error and "served 10240 bytes, the Metalink says 20480" in error


def test_addmetalink_refuses_a_bad_file_with_a_reason(cli: Cli, tmp_path: Path) -> None:
    meta = tmp_path / "bomb.meta4"
    meta.write_bytes(b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa">]><metalink>&a;</metalink>')
    job = cli.ok("create", "metalink").strip()
    refused = cli("addmetalink", job, str(meta), str(tmp_path))
    assert refused.returncode == 2 and "declares a DTD, entities or external references" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert cli.ok("getfilestotal", job).strip() == "0"


PIECE = 65536


def with_pieces(entry: str, body: bytes) -> str:
    """A <file> entry with the sha-1 of each PIECE bytes of `body` as its <pieces>."""
    pieces = "".join(f"<hash>{hashlib.sha1(body[at:at + PIECE]).hexdigest()}</hash>"
                     for at in range(0, len(body), PIECE))
    return entry.replace("<url", f'<pieces length="{PIECE}" type="sha-1">{pieces}</pieces><url', 1)


def fetched_with_pieces(cli: Cli, tmp_path: Path, mirrors: list[tuple[str, int | None]], body: bytes) -> bytes:
    """The bytes a job ends with for a Metalink of one file from `mirrors`, with the size, sha-256 and pieces
    of `body`."""
    entry = file_entry("p.bin", mirrors, size=len(body), sha=hashlib.sha256(body).hexdigest())
    meta = tmp_path / "set.meta4"
    meta.write_bytes(meta4(with_pieces(entry, body)))
    (tmp_path / "out").mkdir()
    job = cli.ok("create", "metalink pieces").strip()
    cli.ok("addmetalink", job, str(meta), str(tmp_path / "out"))
    cli.ok("resume", job)
    assert cli("wait", job, "--timeout", "60").returncode == 0
    cli.ok("complete", job)
    return (tmp_path / "out" / "p.bin").read_bytes()


def test_piece_hashes_keep_the_pieces_before_a_bad_one(cli: Cli, faulty: FaultyServer, tmp_path: Path) -> None:
    """A file:// mirror whose bytes go wrong from 200 KB on: the 64 KiB pieces before it stay, and the next
    mirror (http) is asked for the bad pieces, one run to the end."""
    good = f"/ml/{uuid.uuid4().hex}.bin?size=512k"
    body = content(good)
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(body[:200_000] + bytes(len(body) - 200_000))
    assert fetched_with_pieces(cli, tmp_path, [(corrupt.as_uri(), 1), (faulty.url(good), 2)], body) == body
    asked = [r.headers.get("Range") for r in faulty.requests if r.path_qs == good]
    assert asked == [f"bytes={3 * PIECE}-{len(body) - 1}"], asked  # pieces 0-2 (196,608 bytes) were whole


def test_a_corrupt_piece_in_the_middle_is_fetched_again_alone(cli: Cli, faulty: FaultyServer,
                                                              tmp_path: Path) -> None:
    """A mirror that corrupts one byte of piece 5 of 16: the next mirror is asked for that piece's range alone,
    the pieces after it stay, and the file is byte-identical (its sha-256 checked over the whole)."""
    path = f"/ml/{uuid.uuid4().hex}.bin"
    bad, good = f"{path}?size=1m&corrupt={5 * PIECE + 1000}", f"{path}?size=1m"
    body = content(good)
    assert fetched_with_pieces(cli, tmp_path, [(faulty.url(bad), 1), (faulty.url(good), 2)], body) == body
    fetches = [(r.path_qs, r.range) for r in faulty.requests if r.path_qs.startswith(path)]
    assert fetches == [(bad, None), (good, f"bytes={5 * PIECE}-{6 * PIECE - 1}")], fetches


def test_a_corrupt_piece_from_a_mirror_without_ranges_goes_on_from_it(cli: Cli, faulty: FaultyServer,
                                                                     tmp_path: Path) -> None:
    """The next mirror answers the piece's range with the whole file (no range support): the file is fetched
    the way that mirror can send it, and ends byte-identical."""
    path = f"/ml/{uuid.uuid4().hex}.bin"
    bad, whole = f"{path}?size=1m&corrupt={5 * PIECE}", f"{path}?size=1m&ranges=0"
    body = content(whole)
    assert fetched_with_pieces(cli, tmp_path, [(faulty.url(bad), 1), (faulty.url(whole), 2)], body) == body
    asked = [r.range for r in faulty.requests if r.path_qs == whole]
    assert asked[0] == f"bytes={5 * PIECE}-{6 * PIECE - 1}", asked


def test_a_corrupt_piece_of_the_only_mirror_is_fetched_again_at_resume(cli: Cli, faulty: FaultyServer,
                                                                       tmp_path: Path) -> None:
    """One mirror, its first answer corrupt in piece 9: ERROR says only that piece goes again (kept on record),
    and Resume asks the same server for exactly that range."""
    path_qs = f"/ml/{uuid.uuid4().hex}.bin?size=1m&corrupt={9 * PIECE}&fail=1"
    body = content(path_qs)
    entry = file_entry("one.bin", [(faulty.url(path_qs), 1)], size=len(body), sha=hashlib.sha256(body).hexdigest())
    meta = tmp_path / "set.meta4"
    meta.write_bytes(meta4(with_pieces(entry, body)))
    job = cli.ok("create", "metalink one").strip()
    cli.ok("addmetalink", job, str(meta), str(tmp_path))
    cli.ok("resume", job)
    assert cli("wait", job, "--timeout", "60").returncode == 4
    error = cli.ok("geterror", job)
    assert "BG_E_VALIDATION_FAILED" in error and f"bytes {9 * PIECE}-{10 * PIECE - 1}" in error, error
    assert "only they are fetched again" in error
    cli.ok("resume", job)
    assert cli("wait", job, "--timeout", "60").returncode == 0
    cli.ok("complete", job)
    assert (tmp_path / "one.bin").read_bytes() == body
    asked = [r.range for r in faulty.requests if r.path_qs == path_qs]
    assert asked == [None, f"bytes={9 * PIECE}-{10 * PIECE - 1}"], asked
