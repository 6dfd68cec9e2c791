"""Daemon configuration: a TOML file (stdlib tomllib), every key optional.

Reloaded on SIGHUP so limits and bandwidth policy change without a restart.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import tomllib
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from ..locations import split_host_port


@dataclass(frozen=True)
class PreconfiguredProxy:
    """The config file's `[proxy]` section, or the daemon's environment, in `*_proxy` variable syntax."""

    http_proxy: str = ""
    https_proxy: str = ""
    no_proxy: str = ""

    @classmethod
    def parse(cls, raw: Any, source: str) -> PreconfiguredProxy:
        """The config's [proxy] table: only these three keys, strings."""
        known = {"http_proxy", "https_proxy", "no_proxy"}
        if not isinstance(raw, dict) or set(raw) - known or not all(isinstance(v, str) for v in raw.values()):
            raise ValueError(f"{source}: [proxy] takes only http_proxy, https_proxy and no_proxy, as strings")
        return cls(**raw)

    @classmethod
    def from_environment(cls) -> PreconfiguredProxy:
        env = urllib.request.getproxies_environment()
        return cls(env.get("http", ""), env.get("https", ""), env.get("no", ""))


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?)(b|bit)?(?:/s)?\s*$", re.IGNORECASE)
#: BITS: "uses approximately two kilobits if you specify a value less than two kilobits"
MIN_POLICY_RATE = 250


def parse_rate(value: int | str) -> int:
    """Bytes per second from 1048576, "10M", "500kbit/s", "2MiB/s"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a rate; write bytes per second like 1048576, '10M' or '800kbit/s'")
    number, prefix, binary, unit = match.groups()
    scale = (1024 if binary else 1000) ** " kmg".index(prefix.lower() or " ")
    rate = float(number) * scale
    return int(rate / 8 if (unit or "").lower() == "bit" else rate)


def parse_policy_rate(value: int | str) -> int | None:
    """A group-policy cap: "unlimited" is None; 0 blocks (BG_E_BLOCKED_BY_POLICY), as MaxInternetBandwidth's
    zero does; a cap under 2 kbit/s is 2 kbit/s, as in BITS."""
    if isinstance(value, str) and value.strip().lower() == "unlimited":
        return None
    rate = parse_rate(value)
    return rate if rate == 0 else max(rate, MIN_POLICY_RATE)


#: the keys of a set of caps: all background jobs together, and each background priority's jobs together
_LIMIT_KEYS = {"limit": "total", "high": "high", "normal": "normal", "low": "low"}


@dataclass(frozen=True)
class BandwidthLimits:
    """The caps in force at one time (group policy MaxInternetBandwidth, and EnableBandwidthLimits' per
    priority): bytes/s of all background jobs together and of each background priority's jobs together.
    None: no cap; 0: no background transfer at all (the jobs wait with BG_E_BLOCKED_BY_POLICY)."""

    total: int | None = None
    high: int | None = None
    normal: int | None = None
    low: int | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> BandwidthLimits:
        return cls(**{field: parse_policy_rate(raw[key]) for key, field in _LIMIT_KEYS.items() if key in raw})

    def of(self, priority_name: str) -> int | None:
        """The cap of one background priority's jobs ("HIGH", "NORMAL", "LOW")."""
        return getattr(self, priority_name.lower())

    def blocks(self, priority_name: str) -> bool:
        """Whether a job of this background priority may not transfer at all now."""
        return self.total == 0 or self.of(priority_name) == 0


@dataclass(frozen=True)
class BandwidthWindow:
    """BITS's MaxInternetBandwidth schedule: caps that apply on some days between two times."""

    days: frozenset[int]  # 0 = Monday
    start_minute: int
    end_minute: int
    limits: BandwidthLimits

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> BandwidthWindow:
        if not isinstance(raw, dict) or (unknown := set(raw) - {"days", "from", "to", *_LIMIT_KEYS}):
            raise ValueError(f"a schedule window takes days, from, to, limit, high, normal and low"
                             f"{'; not ' + ', '.join(sorted(unknown)) if isinstance(raw, dict) else ''}")
        names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        spec = str(raw.get("days", "mon-sun")).lower()
        days: set[int] = set()
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            if lo not in names or (hi and hi not in names):
                raise ValueError(f"days {spec!r}: use names like 'mon-fri' or 'sat,sun'")
            a, b = names.index(lo), names.index(hi or lo)
            days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])

        def minute(text: str) -> int:
            h, _, m = str(text).partition(":")
            if not (h.isdigit() and m.isdigit() and int(h) <= 24 and int(m) < 60):
                raise ValueError(f"time {text!r}: write HH:MM")
            return int(h) * 60 + int(m)

        return cls(frozenset(days), minute(raw.get("from", "00:00")), minute(raw.get("to", "24:00")),
                   BandwidthLimits.parse(raw))

    def applies(self, weekday: int, minute_of_day: int) -> bool:
        return weekday in self.days and self.start_minute <= minute_of_day < self.end_minute


@dataclass(frozen=True)
class Config:
    #: MaxJobsPerUser and MaxJobsPerMachine: live jobs one user, and all users together, may have
    #: (BG_E_TOO_MANY_JOBS_PER_USER / _PER_MACHINE). Like MaxFilesPerJob and MaxRangesPerFile they do
    #: not apply to administrators and service accounts, as in BITS.
    max_jobs_per_user: int = 300
    max_jobs_per_machine: int = 3000
    max_files_per_job: int = 200
    #: API connections one uid may hold at once (root: no cap); a hundred `openbits transfer`s, each
    #: following its events, hold about 200. Over it a new connection is closed at once.
    max_connections_per_user: int = 1024
    #: seconds a client may take to send a request's headers, and again its body (slowloris)
    request_timeout: float = 10.0
    #: MaxRangesPerFile (AddFileWithRanges)
    max_ranges_per_file: int = 500
    #: background jobs that transfer at the same time (BITS: one); foreground jobs are not counted.
    #: 2 by measurement (bench/concurrency.py, a queue of large and small-file jobs on loopback):
    #: 1 -> 6.1 s, 2 -> 3.8 s, 4 -> 4.9 s to drain; a second job hides the per-file latency of the first.
    max_background_transfers: int = 2
    #: seconds a background job transfers before a same-priority job gets its turn
    time_slice: float = 60.0
    #: seconds untouched before a job is cancelled (JobInactivityTimeout, 90 days)
    job_inactivity_timeout: int = 90 * 24 * 3600
    #: seconds a job in a final state stays queryable before it is forgotten
    final_job_retention: int = 24 * 3600
    #: final jobs kept per user (within final_job_retention); over it, or over the bytes below, the
    #: user's oldest final jobs are forgotten first, with their events
    max_retained_jobs_per_user: int = 300
    max_retained_bytes_per_user: int = 64 << 20
    #: seconds events stay in the store for clients that reconnect with their last seq (openbits.events)
    event_retention: int = 7 * 24 * 3600
    #: events kept at most, however young
    max_events: int = 1_000_000
    #: seconds a callback may take to acknowledge job_transferred/job_error before it counts as failed
    callback_timeout: float = 300.0
    #: members of this group are administrators (None: sudo, or wheel where that exists)
    admin_group: str | None = None
    #: [proxy] http_proxy / https_proxy / no_proxy: the PRECONFIG proxy (None: the daemon's environment's)
    proxy: PreconfiguredProxy | None = None
    #: [bandwidth] limit, high, normal, low: the caps outside every schedule window (MaxInternetBandwidth)
    bandwidth: BandwidthLimits = field(default_factory=BandwidthLimits)
    bandwidth_schedule: tuple[BandwidthWindow, ...] = field(default_factory=tuple)
    #: [bandwidth] ignore_limits_when_idle: the cap above is lifted while nobody else uses the link
    bandwidth_ignore_limits_when_idle: bool = False
    #: [bandwidth] upload_control: background uploads sense and yield to other uploads (sensing.py, UP;
    #: tests/test_politeness_upload.py); false runs them at the policy's cap alone. Read at start only.
    bandwidth_upload_control: bool = True
    #: [network] metered / roaming: the cost state when NetworkManager cannot tell (core/cost.py)
    network_metered: bool = False
    network_roaming: bool = False
    #: [users] require_logon: where no systemd-logind is on the system bus, whether a user's jobs wait for a
    #: logon that cannot be seen (true: only service accounts transfer) or run as if logged on (core/logons.py)
    users_require_logon: bool = False
    #: [users] service_group: its members are service accounts, always logged on like uids below UID_MIN
    users_service_group: str | None = None
    #: [metrics] listen: HOST:PORT where Prometheus may scrape over TCP ("" = only /v1/metrics on the socket)
    metrics_listen: str = ""
    #: [tls] ca_file: a PEM bundle of CAs (and CRLs) every job trusts besides the system's. Read at start only.
    tls_ca_file: str | None = None

    @classmethod
    def load(cls, path: str | None) -> Config:
        if path is None:
            return cls()
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ValueError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ValueError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(raw, source=path)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> Config:
        raw = dict(raw)
        proxy = raw.pop("proxy", None)
        bandwidth = raw.pop("bandwidth", {})
        network = raw.pop("network", {})
        users = raw.pop("users", {})
        metrics = raw.pop("metrics", {})
        tls = raw.pop("tls", {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in known or key.startswith(_SECTIONED):
                top = sorted(k for k in known if not k.startswith(_SECTIONED) and k != "proxy")
                raise ValueError(f"{source}: unknown key {key!r}; known keys: {', '.join(top)}, [proxy], "
                                 "[bandwidth], [network], [users], [metrics], [tls]")
            expected = type(getattr(cls(), key))
            if key == "admin_group" and isinstance(value, str):
                values[key] = value
            elif expected is float and isinstance(value, (int, float)) and value > 0:
                values[key] = float(value)
            elif expected is int and isinstance(value, int) and not isinstance(value, bool) and value > 0:
                values[key] = value
            else:
                raise ValueError(f"{source}: {key} = {value!r} is not a valid value (a positive number expected)")
        if proxy is not None:
            values["proxy"] = PreconfiguredProxy.parse(proxy, source)
        try:
            if not isinstance(bandwidth, dict) or (unknown := set(bandwidth) - _BANDWIDTH_KEYS):
                raise ValueError(f"unknown key(s) {', '.join(sorted(unknown)) if isinstance(bandwidth, dict) else ''}; "
                                 f"known: {', '.join(sorted(_BANDWIDTH_KEYS))}")
            values["bandwidth"] = BandwidthLimits.parse(bandwidth)
            values["bandwidth_schedule"] = tuple(BandwidthWindow.parse(w) for w in bandwidth.get("schedule", []))
            idle = bandwidth.get("ignore_limits_when_idle", False)
            if not isinstance(idle, bool):
                raise ValueError(f"ignore_limits_when_idle = {idle!r}: write true or false")
            values["bandwidth_ignore_limits_when_idle"] = idle
            upload = bandwidth.get("upload_control", True)
            if not isinstance(upload, bool):
                raise ValueError(f"upload_control = {upload!r}: write true or false")
            values["bandwidth_upload_control"] = upload
        except (ValueError, AttributeError, TypeError) as exc:
            raise ValueError(f"{source}: [bandwidth]: {exc}") from None
        values.update(_network(network, source))
        values.update(_users(users, source))
        values.update(_metrics(metrics, source))
        if not isinstance(tls, dict) or set(tls) - {"ca_file"}:
            raise ValueError(f"{source}: [tls] takes only ca_file = \"/path/to/cas.pem\"")
        ca_file = tls.get("ca_file")
        if ca_file is not None and not (isinstance(ca_file, str) and ca_file.startswith("/")):
            raise ValueError(f"{source}: [tls] ca_file = {ca_file!r}: write an absolute path to a PEM file")
        values["tls_ca_file"] = ca_file
        return cls(**values)

    def bandwidth_limits(self, weekday: int, minute_of_day: int) -> BandwidthLimits:
        """The background bandwidth caps in force: the first matching schedule window's, else [bandwidth]'s."""
        for window in self.bandwidth_schedule:
            if window.applies(weekday, minute_of_day):
                return window.limits
        return self.bandwidth

    def bandwidth_limits_now(self) -> BandwidthLimits:
        """The caps in force at this local time."""
        now = datetime.datetime.now()
        return self.bandwidth_limits(now.weekday(), now.hour * 60 + now.minute)


#: fields set from a [section] of their own, not from a top-level key
_SECTIONED = ("bandwidth", "network", "users", "metrics", "tls")
_BANDWIDTH_KEYS = {*_LIMIT_KEYS, "schedule", "ignore_limits_when_idle", "upload_control"}


def _metrics(raw: Any, source: str) -> dict[str, str]:
    """[metrics]: listen = "HOST:PORT", the TCP address of the Prometheus exposition (off when absent)."""
    if not isinstance(raw, dict) or set(raw) - {"listen"}:
        raise ValueError(f"{source}: [metrics] takes only listen = \"HOST:PORT\"")
    listen = raw.get("listen", "")
    if not isinstance(listen, str):
        raise ValueError(f"{source}: [metrics] listen = {listen!r}: write a string \"HOST:PORT\"")
    if listen:
        try:
            if not split_host_port(listen)[0]:
                raise ValueError(f"{listen!r} names no host; write \"127.0.0.1:9464\" (all addresses: \"0.0.0.0:9464\")")
        except ValueError as exc:
            raise ValueError(f"{source}: [metrics] listen: {exc}") from None
    return {"metrics_listen": listen}


def _users(raw: Any, source: str) -> dict[str, Any]:
    """[users]: require_logon (a boolean) and service_group (a group name)."""
    if not isinstance(raw, dict) or set(raw) - {"require_logon", "service_group"}:
        raise ValueError(f"{source}: [users] takes only require_logon = true|false and service_group = \"GROUP\"")
    values: dict[str, Any] = {}
    if "require_logon" in raw:
        if not isinstance(raw["require_logon"], bool):
            raise ValueError(f"{source}: [users] require_logon = {raw['require_logon']!r}: write true or false")
        values["users_require_logon"] = raw["require_logon"]
    if "service_group" in raw:
        if not isinstance(raw["service_group"], str) or not raw["service_group"]:
            raise ValueError(f"{source}: [users] service_group = {raw['service_group']!r}: write a group name")
        values["users_service_group"] = raw["service_group"]
    return values


def _network(raw: Any, source: str) -> dict[str, bool]:
    """[network]: metered and roaming, booleans (the cost state where NetworkManager is not running)."""
    if not isinstance(raw, dict) or set(raw) - {"metered", "roaming"}:
        raise ValueError(f"{source}: [network] takes only metered = true|false and roaming = true|false")
    values: dict[str, bool] = {}
    for key, value in raw.items():
        if not isinstance(value, bool):
            raise ValueError(f"{source}: [network] {key} = {value!r}: write true or false")
        values[f"network_{key}"] = value
    return values
