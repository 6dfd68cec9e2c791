"""bitsadmin's /SetProxySettings and /GetProxyUsage, /GetProxyList, /GetProxyBypassList, as two verbs."""

from __future__ import annotations

import click

from ..enums import ProxyUsage
from .app import cli, open_job


@cli.command()
@click.argument("job")
@click.argument("usage", type=click.Choice([u.name for u in ProxyUsage], case_sensitive=False))
@click.option("--list", "proxy_list", help="OVERRIDE: proxies, e.g. 'http://proxy:3128' or "
              "'http=http://p1:80 https=http://p2:8080' (commas work too).")
@click.option("--bypass", help="OVERRIDE: hosts that go direct, e.g. '<local> *.example.org 10.0.0.1' "
              "(NULL or '' for none).")
def setproxy(job: str, usage: str, proxy_list: str | None, bypass: str | None) -> None:
    """Set the job's proxy (bitsadmin /SetProxySettings): PRECONFIG, NO_PROXY, OVERRIDE or AUTODETECT.

    PRECONFIG (and AUTODETECT: no WPAD on Linux) is the daemon's configured proxy, [proxy] in its config
    file, else its http_proxy/https_proxy/no_proxy environment.
    """
    bypass = None if bypass in (None, "", "NULL") else bypass
    open_job(job).set_proxy_settings(ProxyUsage[usage.upper()], proxy_list, bypass)


@cli.command()
@click.argument("job")
def getproxy(job: str) -> None:
    """Print the job's proxy usage, then its proxy list and bypass list (one a line, when set)."""
    info = open_job(job).last_info
    click.echo(info.proxy_usage.name)
    for value in (info.proxy_list, info.proxy_bypass_list):
        if value is not None:
            click.echo(value)
