"""TLS verbs: setsecurityflags, getsecurityflags, setcafile, getcafile, setclientcertificate,
getclientcertificate, removeclientcertificate. A key's passphrase is read from stdin or a hidden prompt."""

from __future__ import annotations

import os

import click

from ..enums import CertStoreLocation, SecurityFlags
from .app import cli, open_job
from .tokens import parse_flags, password

#: SetSecurityFlags names without their BG_ prefix, and the redirect policies by their short names too
SECURITY_NAMES: dict[str, int] = {
    **{flag.name: int(flag) for flag in SecurityFlags if flag.name},
    "HTTP_REDIRECT_POLICY_ALLOW_SILENT": 0,
    "ALLOW_SILENT": 0, "ALLOW_REPORT": 0x100, "DISALLOW": 0x200, "ALLOW_HTTPS_TO_HTTP": 0x800,
}
STORE = click.Choice([s.name for s in CertStoreLocation], case_sensitive=False)


def security_flag_names(flags: int) -> str:
    """0x0906 SSL_IGNORE_CERT_CN_INVALID|SSL_IGNORE_CERT_DATE_INVALID|...: the number and what it means."""
    names = [flag.name for flag in SecurityFlags if flag and (flag & flags) == flag and flag.name]
    return f"0x{flags:04x} " + ("|".join(names) or "NONE")


@cli.command()
@click.argument("job")
@click.argument("flags")
def setsecurityflags(job: str, flags: str) -> None:
    """Set the HTTP security flags: a number (0x808) or names joined by | (SSL_IGNORE_UNKNOWN_CA|ALLOW_REPORT):
    SSL_ENABLE_CRL_CHECK, SSL_IGNORE_CERT_CN_INVALID, SSL_IGNORE_CERT_DATE_INVALID, SSL_IGNORE_UNKNOWN_CA,
    SSL_IGNORE_CERT_WRONG_USAGE, one redirect policy (ALLOW_SILENT, ALLOW_REPORT, DISALLOW), ALLOW_HTTPS_TO_HTTP."""
    open_job(job).set_properties(security_flags=parse_flags(flags, SECURITY_NAMES))


@cli.command()
@click.argument("job")
def getsecurityflags(job: str) -> None:
    """Print the HTTP security flags, as a number and names."""
    click.echo(security_flag_names(open_job(job).last_info.security_flags))


@cli.command()
@click.argument("job")
@click.argument("path", required=False)
@click.option("--clear", is_flag=True, help="Trust only the system's and the administrator's CAs again.")
def setcafile(job: str, path: str | None, clear: bool) -> None:
    """Trust the CAs (and CRLs) of the PEM file PATH for this job's https servers (read as you)."""
    if clear == (path is not None):
        raise click.UsageError("give either PATH or --clear")
    open_job(job).set_properties(ca_file=os.path.abspath(path) if path else "")


@cli.command()
@click.argument("job")
def getcafile(job: str) -> None:
    """Print the job's own CA file (nothing when it has none)."""
    ca_file = open_job(job).last_info.ca_file
    if ca_file:
        click.echo(ca_file)


@cli.command()
@click.argument("job")
@click.argument("path", required=False)
@click.option("--thumbprint", help="SetClientCertificateByID: the certificate's SHA-1, 40 hex digits, from the store.")
@click.option("--subject", help="SetClientCertificateByName: the certificate's subject or common name, from the store.")
@click.option("--store", type=STORE, default=CertStoreLocation.CURRENT_USER.name, show_default=True,
              help="CURRENT_USER: ~/.config/openbits/certs/; LOCAL_MACHINE: /etc/openbits/certs/ (administrators).")
@click.option("--passphrase-stdin", is_flag=True, help="The key is encrypted: read its passphrase from stdin.")
@click.option("--passphrase", "ask", is_flag=True, help="The key is encrypted: ask for its passphrase.")
def setclientcertificate(job: str, path: str | None, thumbprint: str | None, subject: str | None, store: str,
                         passphrase_stdin: bool, ask: bool) -> None:
    """Present a client certificate to https servers: a PEM (certificate and key) or PKCS#12 file PATH, or one
    of your store by --thumbprint or --subject. The daemon reads it as you now and at every transfer."""
    if sum(v is not None for v in (path, thumbprint, subject)) != 1:
        raise click.UsageError("give exactly one of PATH, --thumbprint or --subject")
    secret = password(passphrase_stdin, "Passphrase") if passphrase_stdin or ask else None
    open_job(job).set_client_certificate(path=path, thumbprint=thumbprint, subject=subject,
                                         store=CertStoreLocation[store.upper()], passphrase=secret)


@cli.command()
@click.argument("job")
def getclientcertificate(job: str) -> None:
    """Print where the client certificate is, its thumbprint and subject (nothing when there is none)."""
    chosen = open_job(job).last_info.client_certificate
    if chosen is not None:
        click.echo(f"location: {chosen.get('path') or chosen.get('store')}")
        click.echo(f"thumbprint: {chosen['thumbprint']}")
        click.echo(f"subject: {chosen['subject']}")


@cli.command()
@click.argument("job")
def removeclientcertificate(job: str) -> None:
    """Stop presenting a client certificate."""
    open_job(job).remove_client_certificate()
