"""Where openbitsd's log goes: journald's native protocol, JSON lines, or plain text on a terminal.

Structured fields ride on each record as `extra={"openbits_job": …, "openbits_user": …,
"openbits_error": …}` and become the journal fields OPENBITS_JOB, OPENBITS_USER and
OPENBITS_ERROR (so `journalctl -u openbitsd OPENBITS_JOB=<guid>` finds one job's history) or
keys of the JSON object. The native protocol is the documented one (systemd.journal-fields(7),
"Native Journal Protocol"): a datagram of FIELD=value lines, a value with a newline in
length-prefixed form, and a memfd passed with SCM_RIGHTS when the datagram is too large.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import struct
import sys
from typing import Any, TextIO

JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: record attribute -> journal field / JSON key
FIELDS = {"openbits_job": "OPENBITS_JOB", "openbits_user": "OPENBITS_USER", "openbits_error": "OPENBITS_ERROR"}
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def syslog_priority(level: int) -> int:
    """logging level -> syslog PRIORITY (3 err, 4 warning, 6 info, 7 debug; 2 crit)."""
    if level >= logging.CRITICAL:
        return 2
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    return 6 if level >= logging.INFO else 7


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """The openbits_* extras a record carries, by journal field name."""
    return {field: str(value) for attr, field in FIELDS.items() if (value := getattr(record, attr, None)) is not None}


class JournalHandler(logging.Handler):
    """Sends each record to journald as one entry with MESSAGE, PRIORITY and the OPENBITS_* fields."""

    def __init__(self, identifier: str, address: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.address = address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def entry(self, record: logging.LogRecord) -> bytes:
        fields = {
            "MESSAGE": self.format(record),
            "PRIORITY": str(syslog_priority(record.levelno)),
            "SYSLOG_IDENTIFIER": self.identifier,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
            **record_fields(record),
        }
        out = bytearray()
        for key, value in fields.items():
            data = value.encode("utf-8", "replace")
            if b"\n" in data:
                out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
            else:
                out += key.encode() + b"=" + data + b"\n"
        return bytes(out)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.entry(record)
            try:
                self._sock.sendto(data, self.address)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_memfd(data)
        except Exception:  # logging must never take the daemon down
            self.handleError(record)

    def _send_memfd(self, data: bytes) -> None:
        """An entry larger than a datagram: write it to a sealed memfd and pass the descriptor."""
        fd = os.memfd_create("openbits-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
                        | fcntl.F_SEAL_SEAL)
            self._sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))], 0, self.address)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._sock.close()
        super().close()


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message and the openbits fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "priority": syslog_priority(record.levelno),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update({field.lower(): value for field, value in record_fields(record).items()})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def journal_stream_is(stream: TextIO, environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """True when `stream` is the journal stream systemd connected (JOURNAL_STREAM=dev:ino matches it)."""
    expected = environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def configure(identifier: str, level: str, target: str, fmt: str) -> None:
    """Install the one handler: target journal|stderr|auto (journal when stderr is systemd's journal stream)."""
    if target == "auto":
        target = "journal" if journal_stream_is(sys.stderr) and os.path.exists(JOURNAL_SOCKET) else "stderr"
    handler: logging.Handler
    if target == "journal":
        handler = JournalHandler(identifier)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
