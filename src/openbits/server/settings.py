"""Virtual directories and their settings: the BITS IIS extension properties, in TOML.

A configuration file maps URL prefixes to directories::

    cleanup_interval = 43200          # seconds between clean-up passes (IIS default: 12 hours)

    [vdir."/uploads"]
    directory = "/srv/uploads"
    max_upload_size = 4294967296      # BITSMaximumUploadSize (absent = no limit)
    allow_overwrites = false          # BITSAllowOverwrites
    session_directory = "BITS-Sessions"   # BITSSessionDirectory, relative to `directory` or absolute
    session_timeout = 1209600         # BITSSessionTimeout, seconds without progress
    notification_type = 0             # BITSServerNotificationType: 0 none, 1 by reference, 2 by value
    notification_url = "app"          # BITSServerNotificationURL, relative to the upload URL or absolute
    notification_timeout = 300        # seconds the server application may take to answer
    host_id = "node1.example.com"     # BITSHostId
    host_id_fallback_timeout = 86400  # BITSHostIdFallbackTimeout
"""

from __future__ import annotations

import enum
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

#: IIS defaults (bits-iis-extension-properties.md).
DEFAULT_SESSION_TIMEOUT = 1_209_600
DEFAULT_HOST_ID_FALLBACK_TIMEOUT = 86_400
DEFAULT_CLEANUP_INTERVAL = 43_200
#: "The server application must provide a response within five minutes."
DEFAULT_NOTIFICATION_TIMEOUT = 300.0


class NotificationType(enum.IntEnum):
    """BITSServerNotificationType."""

    NONE = 0
    BY_REFERENCE = 1
    BY_VALUE = 2


@dataclass(frozen=True)
class VirtualDirectory:
    """One URL prefix served from one directory, with its BITS upload settings."""

    prefix: str
    directory: Path
    max_upload_size: int | None = None
    allow_overwrites: bool = False
    session_directory: str = "BITS-Sessions"
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    notification_type: NotificationType = NotificationType.NONE
    notification_url: str | None = None
    notification_timeout: float = DEFAULT_NOTIFICATION_TIMEOUT
    host_id: str | None = None
    host_id_fallback_timeout: int | None = DEFAULT_HOST_ID_FALLBACK_TIMEOUT

    def __post_init__(self) -> None:
        prefix = "/" + self.prefix.strip("/")
        object.__setattr__(self, "prefix", prefix)
        object.__setattr__(self, "directory", Path(os.path.realpath(self.directory)))
        object.__setattr__(self, "notification_type", NotificationType(self.notification_type))
        if self.notification_type is not NotificationType.NONE and not self.notification_url:
            raise ValueError(f"vdir {prefix}: notification_type {int(self.notification_type)} needs notification_url")
        if self.max_upload_size is not None and self.max_upload_size < 0:
            raise ValueError(f"vdir {prefix}: max_upload_size must not be negative")
        if self.session_timeout <= 0:
            raise ValueError(f"vdir {prefix}: session_timeout must be positive")

    @property
    def sessions_path(self) -> Path:
        """Where session state lives (BITSSessionDirectory, relative to the directory unless absolute)."""
        return self.directory / self.session_directory

    @property
    def reserved_name(self) -> str | None:
        """The first path component uploads may not use, because the session directory is there."""
        relative = Path(self.session_directory)
        return None if relative.is_absolute() else relative.parts[0]

    def matches(self, path: str) -> str | None:
        """The part of a URL path below this prefix ('' for the prefix itself), or None if outside."""
        if self.prefix == "/":
            return path[1:] if path.startswith("/") else None
        if path == self.prefix:
            return ""
        if path.startswith(self.prefix + "/"):
            return path[len(self.prefix) + 1 :]
        return None


@dataclass(frozen=True)
class ServerSettings:
    """All virtual directories of one server and the clean-up schedule."""

    vdirs: tuple[VirtualDirectory, ...]
    cleanup_interval: float = DEFAULT_CLEANUP_INTERVAL
    #: Unsynced bytes per session after which the data file is fsync'ed and the progress recorded.
    sync_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        prefixes = [v.prefix for v in self.vdirs]
        if not prefixes:
            raise ValueError("no virtual directory configured")
        if len(set(prefixes)) != len(prefixes):
            raise ValueError(f"duplicate virtual directory prefixes: {prefixes}")
        # Longest prefix first, so /a/b wins over /a.
        object.__setattr__(self, "vdirs", tuple(sorted(self.vdirs, key=lambda v: -len(v.prefix))))

    def lookup(self, path: str) -> tuple[VirtualDirectory, str] | None:
        """The virtual directory serving a URL path and the remote name below it."""
        for vdir in self.vdirs:
            rest = vdir.matches(path)
            if rest is not None:
                return vdir, rest
        return None

    @classmethod
    def for_root(cls, directory: str | os.PathLike[str], **overrides: Any) -> ServerSettings:
        """`--root DIR`: one virtual directory "/" with the IIS defaults (and any overrides)."""
        return cls(vdirs=(VirtualDirectory(prefix="/", directory=Path(directory), **overrides),))


_VDIR_KEYS = {f.name for f in fields(VirtualDirectory)} - {"prefix"}


def load_settings(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> ServerSettings:
    """Read a TOML configuration; `root` (from --root) adds a "/" vdir unless the file defines one."""
    data = tomllib.loads(Path(path).read_text())
    vdirs = []
    for prefix, table in dict(data.pop("vdir", {})).items():
        unknown = set(table) - _VDIR_KEYS
        if unknown:
            raise ValueError(f"vdir {prefix}: unknown settings {sorted(unknown)}")
        if "directory" not in table:
            raise ValueError(f"vdir {prefix}: 'directory' is required")
        vdirs.append(VirtualDirectory(prefix=prefix, **{**table, "directory": Path(table["directory"])}))
    if root is not None and all(v.prefix != "/" for v in vdirs):
        vdirs.append(VirtualDirectory(prefix="/", directory=Path(root)))
    known = {"cleanup_interval", "sync_bytes"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")
    return ServerSettings(vdirs=tuple(vdirs), **data)
