"""SetProxySettings / GetProxySettings: which HTTP proxy a job's requests go through.

BG_JOB_PROXY_USAGE on Linux:

- PRECONFIG (the default) is the administrator's proxy: the `[proxy]` section of the daemon's
  config file when it has one (`http_proxy`, `https_proxy`, `no_proxy`), else the daemon's own
  environment (`http_proxy`/`HTTP_PROXY`, `https_proxy`/`HTTPS_PROXY`, `no_proxy`/`NO_PROXY`).
  A user daemon inherits its user's environment; a system daemon has none unless the
  administrator sets it, which is the point of the config section.
- AUTODETECT would be WPAD; Linux has no system WPAD, so it is PRECONFIG.
- NO_PROXY goes direct, whatever the environment says.
- OVERRIDE uses the job's proxy list and bypass list, in the syntax of the BITS documentation.

The lists are checked for size and shape when set; their syntax is validated when a file is
transferred, as BITS does (a bad list puts the job in ERROR with BG_E_INVALID_PROXY_INFO).
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

from yarl import URL

from ..enums import ErrorContext, ProxyUsage
from ..errors import BitsError, ErrorCode
from ..model.config import Config, PreconfiguredProxy
from ..model.job import Job

#: SetProxySettings: each list is limited to 4,000 characters.
MAX_PROXY_LIST = 4000
_SEPARATORS = re.compile(r"[\s,;]+")
_HOST = re.compile(r"^(\*|\*?[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]|<local>)$")


@dataclass(frozen=True)
class ProxyRoute:
    """The proxy for one request; `credential` is the user:password of a preconfigured proxy URL."""

    url: URL
    credential: tuple[str, str] | None = None


def check_proxy_settings(usage: ProxyUsage, proxy_list: str | None,
                         bypass_list: str | None) -> tuple[str | None, str | None]:
    """SetProxySettings' own refusals; returns the lists as stored ("" counts as NULL)."""
    proxy_list, bypass_list = proxy_list or None, bypass_list or None
    if usage != ProxyUsage.OVERRIDE and (proxy_list or bypass_list):
        raise BitsError(ErrorCode.E_INVALIDARG, f"proxy usage {usage.name} takes no proxy list or bypass list; "
                        "use OVERRIDE to give them", ErrorContext.GENERAL_QUEUE_MANAGER)
    if usage == ProxyUsage.OVERRIDE and not proxy_list:
        raise BitsError(ErrorCode.E_INVALIDARG, "proxy usage OVERRIDE needs a proxy list (e.g. "
                        "'http://proxy:3128')", ErrorContext.GENERAL_QUEUE_MANAGER)
    if proxy_list and len(proxy_list) > MAX_PROXY_LIST:
        raise BitsError(ErrorCode.BG_E_PROXY_LIST_TOO_LARGE, f"the proxy list has {len(proxy_list)} characters; "
                        f"at most {MAX_PROXY_LIST}", ErrorContext.GENERAL_QUEUE_MANAGER)
    if bypass_list and len(bypass_list) > MAX_PROXY_LIST:
        raise BitsError(ErrorCode.BG_E_PROXY_BYPASS_LIST_TOO_LARGE, f"the proxy bypass list has {len(bypass_list)} "
                        f"characters; at most {MAX_PROXY_LIST}", ErrorContext.GENERAL_QUEUE_MANAGER)
    if proxy_list and "@" in proxy_list:
        # The lists are shown by info and stored on disk: a password must not ride in them.
        raise BitsError(ErrorCode.E_INVALIDARG, "the proxy list may not carry a user name or password; set them "
                        "with setcredentials JOB PROXY BASIC USER", ErrorContext.GENERAL_QUEUE_MANAGER)
    return proxy_list, bypass_list


def _invalid(what: str) -> BitsError:
    return BitsError(ErrorCode.BG_E_INVALID_PROXY_INFO, f"{what}; fix it with setproxy", ErrorContext.GENERAL_TRANSPORT)


def parse_proxy_list(text: str) -> dict[str | None, URL]:
    """"[protocol=][protocol://]server[:port]" entries -> proxy per URL scheme (None: any scheme).

    The first entry for a scheme wins; openbits reaches proxies over plain http.
    """
    proxies: dict[str | None, URL] = {}
    for entry in _SEPARATORS.split(text.strip()):
        target, equals, address = entry.rpartition("=")
        target = target.lower() if equals else None
        if target not in (None, "http", "https"):
            raise _invalid(f"proxy list entry {entry!r}: only http= and https= proxies exist")
        if "://" not in address:
            address = "http://" + address
        try:
            url = URL(address)
        except ValueError:
            raise _invalid(f"proxy list entry {entry!r} is not server[:port]") from None
        if url.scheme != "http" or not url.host or url.path not in ("", "/") or url.query_string or url.user:
            raise _invalid(f"proxy list entry {entry!r}: write [http=|https=][http://]server[:port]")
        proxies.setdefault(target, url.with_path(""))
    return proxies


def bypassed(host: str, bypass_list: str | None) -> bool:
    """Whether host skips the proxy: exact names and addresses, "*.suffix" wildcards, <local> (no dot)."""
    host = host.lower().rstrip(".")
    for pattern in _SEPARATORS.split((bypass_list or "").strip().lower()):
        if not pattern:
            continue
        if not _HOST.match(pattern):
            raise _invalid(f"proxy bypass entry {pattern!r}: a host, an address, '*.suffix' or <local>")
        if pattern == "<local>":
            if "." not in host and ":" not in host:
                return True
        elif pattern == "*" or (pattern.startswith("*") and host.endswith(pattern[1:])) or host == pattern.strip("[]"):
            return True
    return False


def _preconfigured_route(preconfigured: PreconfiguredProxy, url: URL) -> ProxyRoute | None:
    """The *_proxy variables' meaning, urllib's no_proxy matching included."""
    address = preconfigured.https_proxy if url.scheme == "https" else preconfigured.http_proxy
    if not address or urllib.request.proxy_bypass_environment(url.host or "", {"no": preconfigured.no_proxy}):
        return None
    proxy = URL(address if "://" in address else "http://" + address)
    if proxy.scheme != "http" or not proxy.host:
        raise _invalid(f"the preconfigured {url.scheme} proxy {proxy.with_user(None)} is not http://server[:port]")
    credential = (proxy.user, proxy.password or "") if proxy.user else None
    return ProxyRoute(proxy.with_user(None).with_path(""), credential)


def proxy_route(job: Job, section: PreconfiguredProxy | None, remote_url: str) -> ProxyRoute | None:
    """The proxy remote_url goes through for this job, or None for a direct connection.

    `section` is the config's [proxy] section: when there is one (even empty, meaning no proxy) it is
    PRECONFIG's proxy, else the daemon's environment is.
    """
    url = URL(remote_url)
    usage = ProxyUsage(job.proxy_usage)
    if url.scheme not in ("http", "https") or usage == ProxyUsage.NO_PROXY:
        return None
    if usage != ProxyUsage.OVERRIDE:
        return _preconfigured_route(section if section is not None else PreconfiguredProxy.from_environment(), url)
    proxies = parse_proxy_list(job.proxy_list or "")
    if bypassed(url.host or "", job.proxy_bypass_list):
        return None
    proxy = proxies.get(url.scheme) or proxies.get(None)
    return None if proxy is None else ProxyRoute(proxy)


def preconfigured_proxy(config: Config) -> PreconfiguredProxy:
    """PRECONFIG's proxy as proxy_route reads it: the config's section, else the daemon's environment. Read
    once per attempt: scanning the environment per file took a tenth of the loop's time (10,000 files)."""
    return config.proxy if config.proxy is not None else PreconfiguredProxy.from_environment()
