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
    fragment_limit = 268435456        # the largest fragment clients are told it takes (0: tell none)

and, for a farm of stateless nodes, where every vdir keeps its sessions and uploads::

    [storage]
    backend = "s3"                    # "local" (the default): the vdirs' directories
    endpoint = "http://127.0.0.1:8080"
    bucket = "uploads"
    prefix = "bits/"
    region = "us-east-1"
    credentials_file = "/etc/openbits/s3-credentials.toml"   # access_key_id, secret_access_key; mode 0600
"""

from __future__ import annotations

import enum
import os
import stat
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

#: IIS defaults (bits-iis-extension-properties.md).
DEFAULT_SESSION_TIMEOUT = 1_209_600
DEFAULT_HOST_ID_FALLBACK_TIMEOUT = 86_400
DEFAULT_CLEANUP_INTERVAL = 43_200
#: "The server application must provide a response within five minutes."
DEFAULT_NOTIFICATION_TIMEOUT = 300.0
#: Told to clients (OpenBits-Fragment-Limit): fragments stream through, so large ones cost no memory, and
#: an openbits client sends a fast link's fragments this large (fewer Acks; on object storage, the
#: commits of a fragment's parts overlap).
DEFAULT_FRAGMENT_LIMIT = 256 << 20


class NotificationType(enum.IntEnum):
    """BITSServerNotificationType."""

    NONE = 0
    BY_REFERENCE = 1
    BY_VALUE = 2


@dataclass(frozen=True)
class VirtualDirectory:
    """One URL prefix served from one directory, with its BITS upload settings."""

    prefix: str
    #: The destination folder (local backend; with object storage, uploads go to the bucket).
    directory: Path | None = None
    max_upload_size: int | None = None
    allow_overwrites: bool = False
    session_directory: str = "BITS-Sessions"
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    notification_type: NotificationType = NotificationType.NONE
    notification_url: str | None = None
    notification_timeout: float = DEFAULT_NOTIFICATION_TIMEOUT
    host_id: str | None = None
    host_id_fallback_timeout: int | None = DEFAULT_HOST_ID_FALLBACK_TIMEOUT
    #: The largest fragment clients are told this server takes (OpenBits-Fragment-Limit); 0 tells nothing.
    fragment_limit: int = DEFAULT_FRAGMENT_LIMIT

    def __post_init__(self) -> None:
        prefix = "/" + self.prefix.strip("/")
        object.__setattr__(self, "prefix", prefix)
        if self.directory is not None:
            object.__setattr__(self, "directory", Path(os.path.realpath(self.directory)))
        object.__setattr__(self, "notification_type", NotificationType(self.notification_type))
        if self.notification_type is not NotificationType.NONE and not self.notification_url:
            raise ValueError(f"vdir {prefix}: notification_type {int(self.notification_type)} needs notification_url")
        if self.max_upload_size is not None and self.max_upload_size < 0:
            raise ValueError(f"vdir {prefix}: max_upload_size must not be negative")
        if self.session_timeout <= 0:
            raise ValueError(f"vdir {prefix}: session_timeout must be positive")
        if self.fragment_limit < 0:
            raise ValueError(f"vdir {prefix}: fragment_limit must not be negative (0: do not tell clients)")

    @property
    def sessions_path(self) -> Path:
        """Where session state lives (BITSSessionDirectory, relative to the directory unless absolute)."""
        assert self.directory is not None
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
class ObjectStorage:
    """`[storage] backend = "s3"`: an S3-compatible object store that every node of a farm shares.

    Credentials None: botocore's own search (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws).
    """

    bucket: str
    endpoint: str | None = None
    #: Key prefix of everything this server stores; it belongs to openbits-server (clean-up deletes in it).
    prefix: str = ""
    region: str = "us-east-1"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    #: Parts one multipart upload may have (S3: 10000; Swift's s3api: max_upload_part_num, 1000).
    max_parts: int = 10_000
    #: Connections to the store this process keeps at most.
    connections: int = 256

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("[storage]: 'bucket' is required with backend = \"s3\"")
        if self.max_parts < 2:
            raise ValueError("[storage]: max_parts must be at least 2")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("[storage]: give both access_key_id and secret_access_key, or neither")


@dataclass(frozen=True)
class ServerSettings:
    """All virtual directories of one server, where they store, and the clean-up schedule."""

    vdirs: tuple[VirtualDirectory, ...]
    cleanup_interval: float = DEFAULT_CLEANUP_INTERVAL
    #: Unsynced bytes per session after which the data file is fsync'ed and the progress recorded.
    sync_bytes: int = 16 << 20
    #: None: the local-directory backend.
    storage: ObjectStorage | None = None

    def __post_init__(self) -> None:
        prefixes = [v.prefix for v in self.vdirs]
        if not prefixes:
            raise ValueError("no virtual directory configured")
        if len(set(prefixes)) != len(prefixes):
            raise ValueError(f"duplicate virtual directory prefixes: {prefixes}")
        if self.storage is None:
            for vdir in self.vdirs:
                if vdir.directory is None:
                    raise ValueError(f"vdir {vdir.prefix}: 'directory' is required with the local storage backend")
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
#: What a TOML value of each field type is called, and the TOML types that give one.
_TOML_TYPES: dict[object, tuple[str, tuple[type, ...]]] = {
    int: ("a whole number", (int,)), float: ("a number", (int, float)), bool: ("true or false", (bool,)),
    str: ("a string", (str,)), Path: ("a path (a string)", (str,)), NotificationType: ("0, 1 or 2", (int,)),
}


def _typed(where: str, table: dict[str, Any], cls: type) -> None:
    """Each value of a table of the type its field takes, or one line saying which: not a TypeError
    from deep inside (fragment_limit = "big")."""
    hints = typing.get_type_hints(cls)
    for key, value in table.items():
        kinds = [k for k in typing.get_args(hints[key]) or (hints[key],) if k is not type(None)]
        if not all(k in _TOML_TYPES for k in kinds):
            continue  # not a TOML scalar (vdirs, storage): read on its own
        toml = tuple(t for k in kinds for t in _TOML_TYPES[k][1])
        if isinstance(value, bool) != (bool in kinds) or not isinstance(value, toml):
            raise ValueError(f"{where}: {key} = {value!r} must be {' or '.join(_TOML_TYPES[k][0] for k in kinds)}")


def load_settings(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> ServerSettings:
    """Read a TOML configuration; `root` (from --root) adds a "/" vdir unless the file defines one."""
    data = tomllib.loads(Path(path).read_text())
    storage = _storage(dict(data.pop("storage", {})), Path(path))
    vdirs = []
    for prefix, table in dict(data.pop("vdir", {})).items():
        unknown = set(table) - _VDIR_KEYS
        if unknown:
            raise ValueError(f"vdir {prefix}: unknown settings {sorted(unknown)}")
        _typed(f"vdir {prefix}", table, VirtualDirectory)
        if "directory" in table:
            table = {**table, "directory": Path(table["directory"])}
        vdirs.append(VirtualDirectory(prefix=prefix, **table))
    if root is not None and all(v.prefix != "/" for v in vdirs):
        vdirs.append(VirtualDirectory(prefix="/", directory=Path(root)))
    known = {"cleanup_interval", "sync_bytes"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")
    _typed(str(path), data, ServerSettings)
    return ServerSettings(vdirs=tuple(vdirs), storage=storage, **data)


_STORAGE_KEYS = {f.name for f in fields(ObjectStorage)} | {"credentials_file"}
_SECRET_KEYS = ("access_key_id", "secret_access_key")


def _storage(table: dict[str, Any], config: Path) -> ObjectStorage | None:
    """The [storage] table; credentials only from a file nobody else can read, or from the environment."""
    backend = table.pop("backend", "local")
    if backend == "local":
        if table:
            raise ValueError(f"[storage]: {sorted(table)} apply only to backend = \"s3\"")
        return None
    if backend != "s3":
        raise ValueError(f"[storage]: unknown backend {backend!r} (\"local\" or \"s3\")")
    unknown = set(table) - _STORAGE_KEYS
    if unknown:
        raise ValueError(f"[storage]: unknown settings {sorted(unknown)}")
    if any(k in table for k in _SECRET_KEYS) and config.stat().st_mode & stat.S_IROTH:
        raise ValueError(f"[storage]: {config} holds S3 credentials but is world-readable; chmod o-r it, or move "
                         "them to credentials_file (mode 0600) or to AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    credentials = table.pop("credentials_file", None)
    if credentials is not None and not isinstance(credentials, str):
        raise ValueError(f"[storage]: credentials_file = {credentials!r} must be a path (a string)")
    _typed("[storage]", table, ObjectStorage)
    if credentials is not None:
        table.update(_credentials(Path(credentials)))
    return ObjectStorage(**table)


def _credentials(path: Path) -> dict[str, str]:
    """access_key_id and secret_access_key from a TOML file only the server's user can read."""
    info = path.stat()
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or info.st_uid != os.geteuid():
        raise ValueError(f"[storage]: credentials_file {path} must belong to the server's user and be readable by it "
                         f"alone (chown it, chmod 600 it); it is mode {stat.filemode(info.st_mode)}")
    data = tomllib.loads(path.read_text())
    if set(data) != set(_SECRET_KEYS):
        raise ValueError(f"[storage]: credentials_file {path} must hold exactly {list(_SECRET_KEYS)}")
    return {k: str(data[k]) for k in _SECRET_KEYS}
