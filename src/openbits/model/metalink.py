"""Metalink (RFC 5854, `.meta4`): the files a download is made of, with their sizes, digests and mirrors.

Read with the standard library's XML parser through defusedxml, which refuses a DTD, entity
declarations and external references: a hostile file can neither expand a billion laughs nor make
the reader open another file. The digests become AddFile checksums, the `<url>`s a file's mirrors in
priority order (1 first; without a priority, last), its `<size>` the size every mirror must serve.
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from urllib.parse import urlsplit

import defusedxml
import defusedxml.ElementTree as SafeElementTree

#: RFC 5854's namespace
NS = "{urn:ietf:params:xml:ns:metalink}"
#: hash types (IANA's Hash Function Textual Names) that AddFile's checksums take; others are skipped
_HASHES = {"sha-256": "sha256", "sha-512": "sha512"}
#: ... and those a <pieces> may use: they only find a bad piece, the file's own digest proves the whole
PIECE_HASHES = {**_HASHES, "sha-1": "sha1"}
#: what a mirror may be: the schemes openbits downloads from
_SCHEMES = frozenset({"http", "https", "file", "smb"})
#: RFC 5854 4.2.16: priorities run from 1 (the most preferred) to 999999; without one, a URL comes last
_LOWEST = 999999
#: bytes of a Metalink file read at most
MAX_SIZE = 16 << 20


class MetalinkError(ValueError):
    """The file is no Metalink openbits can use; the message says what is wrong."""


@dataclass(frozen=True)
class MetalinkFile:
    #: a relative path under the download folder
    name: str
    #: the remote names, by priority
    mirrors: list[str]
    size: int | None
    #: "algorithm:hex", as AddFile takes them
    checksums: list[str]
    #: <pieces>: bytes per piece and each piece's "algorithm:hex" in order (None: no usable pieces)
    piece_length: int | None = None
    piece_hashes: list[str] | None = None


def parse_metalink(data: bytes, source: str) -> list[MetalinkFile]:
    """The files of a Metalink document; `source` names it in errors."""
    if len(data) > MAX_SIZE:
        raise MetalinkError(f"{source} is larger than {MAX_SIZE >> 20} MiB; that is no Metalink file")
    try:
        root = SafeElementTree.fromstring(data, forbid_dtd=True)
    except defusedxml.DefusedXmlException as exc:
        raise MetalinkError(f"{source} declares a DTD, entities or external references ({type(exc).__name__}); "
                            "a Metalink file needs none, so it is refused") from None
    except ElementTree.ParseError as exc:
        raise MetalinkError(f"{source} is not well-formed XML: {exc}") from None
    if root.tag != f"{NS}metalink":
        raise MetalinkError(f"{source} is no Metalink 4 file: its root is <{root.tag}>, not <metalink> in "
                            "urn:ietf:params:xml:ns:metalink (RFC 5854; Metalink 3 files are not read)")
    files = [_file(element, source) for element in root.findall(f"{NS}file")]
    if not files:
        raise MetalinkError(f"{source} lists no <file>")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise MetalinkError(f"{source} lists {twice!r} twice")
    return files


def _file(element: ElementTree.Element, source: str) -> MetalinkFile:
    name = _safe_name(element.get("name"), source)
    where = f"{source}, file {name!r}"
    ranked: list[tuple[int, int, str]] = []
    for order, url in enumerate(element.findall(f"{NS}url")):
        text = (url.text or "").strip()
        try:
            priority = int(url.get("priority", _LOWEST))
        except ValueError:
            raise MetalinkError(f"{where}: priority {url.get('priority')!r} is not a number") from None
        if not 1 <= priority <= _LOWEST:
            raise MetalinkError(f"{where}: priority {priority} is outside 1..{_LOWEST}")
        if urlsplit(text).scheme.lower() in _SCHEMES:
            ranked.append((priority, order, text))
    if not ranked:
        raise MetalinkError(f"{where}: no <url> openbits can download from (http, https, file, smb)")
    mirrors = list(dict.fromkeys(text for _, _, text in sorted(ranked)))
    size_text = element.findtext(f"{NS}size")
    size = None
    if size_text is not None:
        if not size_text.strip().isdigit():
            raise MetalinkError(f"{where}: <size> {size_text.strip()!r} is not a number of bytes")
        size = int(size_text)
    checksums = []
    for digest in element.findall(f"{NS}hash"):  # the file's own: a <pieces>' hashes are nested deeper
        algorithm = _HASHES.get((digest.get("type") or "").strip().lower())
        if algorithm is not None:
            checksums.append(f"{algorithm}:{(digest.text or '').strip().lower()}")
    piece_length, piece_hashes = _pieces(element, where)
    return MetalinkFile(name, mirrors, size, checksums, piece_length, piece_hashes)


def _pieces(element: ElementTree.Element, where: str) -> tuple[int | None, list[str] | None]:
    """The first <pieces> whose type openbits hashes: its length and its hashes."""
    for pieces in element.findall(f"{NS}pieces"):
        algorithm = PIECE_HASHES.get((pieces.get("type") or "").strip().lower())
        if algorithm is None:
            continue
        length = (pieces.get("length") or "").strip()
        if not length.isdigit() or int(length) == 0:
            raise MetalinkError(f"{where}: <pieces> length {length!r} is not a positive number of bytes")
        hashes = [f"{algorithm}:{(h.text or '').strip().lower()}" for h in pieces.findall(f"{NS}hash")]
        return (int(length), hashes) if hashes else (None, None)
    return None, None


def _safe_name(name: str | None, source: str) -> str:
    """RFC 5854 4.1.2.1: a relative path that must not climb out of the download folder."""
    if not name or not name.strip():
        raise MetalinkError(f"{source}: a <file> has no name")
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise MetalinkError(f"{source}: file name {name!r} is not a plain relative path (no leading /, no '..', "
                            "no empty parts); it is refused")
    return posixpath.normpath(name)
