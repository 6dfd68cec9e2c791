"""Helper-token and credential verbs: settoken, cleartoken, gettokenflags, settokenflags, gettokenuser,
gettokenticket, setcredentials, removecredentials. Passwords are read from stdin or a hidden prompt,
never from the command line (where every local user could read them in /proc)."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import click

from ..enums import TokenFlags
from ..enums import AuthScheme, AuthTarget
from .app import cli, manager, open_job

FLAG_NAMES = {"LOCAL_FILE": TokenFlags.LOCAL_FILE, "NETWORK": TokenFlags.NETWORK, "NONE": TokenFlags.NONE}


def password(from_stdin: bool, prompt: str) -> str:
    """A secret from the first line of stdin, or a hidden prompt: never from the command line."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt(prompt, hide_input=True))


def parse_flags(text: str, names: Mapping[str, int]) -> int:
    """A number (0x1, 3) or names joined by | or , (LOCAL_FILE|NETWORK)."""
    try:
        return int(text, 0)
    except ValueError:
        pass
    value = 0
    for name in text.replace("|", ",").split(","):
        if name.strip().upper() not in names:
            raise click.BadParameter(f"{name!r}: use a number or {', '.join(names)}", param_hint="FLAGS")
        value |= names[name.strip().upper()]
    return value


def _flag_names(flags: TokenFlags) -> str:
    return "|".join(f.name for f in TokenFlags if f and f in flags and f.name) or "NONE"


@cli.command()
@click.argument("job")
@click.option("--user", "username", help="Log this user on (PAM) and make it the helper.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--ticket", help="Become the helper (as the user this runs as) with the owner's gettokenticket.")
def settoken(job: str, username: str | None, password_stdin: bool, ticket: str | None) -> None:
    """Set the job's helper token: --user logs a user on, --ticket redeems the owner's ticket, neither: you."""
    if username is not None and ticket is not None:
        raise click.UsageError("give --user or --ticket, not both")
    if ticket is not None:
        helper = manager().redeem_token_ticket(job, ticket)
    elif username is not None:
        helper = open_job(job).token_options().set_helper_token(username, password(password_stdin, "Password"))
    else:
        helper = open_job(job).token_options().set_helper_token()
    click.echo(f"{helper.uid} {helper.user}")


@cli.command()
@click.argument("job")
def cleartoken(job: str) -> None:
    """Discard the job's helper token (the flags stay)."""
    open_job(job).token_options().clear_helper_token()


@cli.command()
@click.argument("job")
def gettokenflags(job: str) -> None:
    """Print what the helper token is used for: LOCAL_FILE, NETWORK, both, or NONE."""
    click.echo(_flag_names(open_job(job).token_options().helper_token_flags()))


@cli.command()
@click.argument("job")
@click.argument("flags")
def settokenflags(job: str, flags: str) -> None:
    """Use the helper token for FLAGS: LOCAL_FILE (0x1), NETWORK (0x2), LOCAL_FILE|NETWORK, or 0 for nothing."""
    open_job(job).token_options().set_helper_token_flags(parse_flags(flags, FLAG_NAMES))


@cli.command()
@click.argument("job")
def gettokenuser(job: str) -> None:
    """Print the helper's uid and user name (nothing when no helper token is set)."""
    helper = open_job(job).token_options().helper_token_user()
    if helper is not None:
        click.echo(f"{helper.uid} {helper.user}")


@cli.command()
@click.argument("job")
def gettokenticket(job: str) -> None:
    """Print a one-time ticket (a minute): `openbits settoken JOB-GUID --ticket T`, run as the helper, redeems it."""
    click.echo(open_job(job).token_ticket())


TARGET = click.Choice([t.name for t in AuthTarget], case_sensitive=False)
SCHEME = click.Choice([s.name for s in AuthScheme], case_sensitive=False)


@cli.command()
@click.argument("job")
@click.argument("target", type=TARGET)
@click.argument("scheme", type=SCHEME)
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
def setcredentials(job: str, target: str, scheme: str, username: str, password_stdin: bool) -> None:
    """Answer TARGET's (SERVER or PROXY) SCHEME (BASIC, DIGEST, NEGOTIATE; NTLM for servers) challenges as
    USERNAME, and log on to SMB shares with NTLM or NEGOTIATE ones; nobody can read them back."""
    open_job(job).set_credentials(AuthTarget[target.upper()], AuthScheme[scheme.upper()], username,
                                  password(password_stdin, "Password"))


@cli.command()
@click.argument("job")
@click.argument("target", type=TARGET)
@click.argument("scheme", type=SCHEME)
def removecredentials(job: str, target: str, scheme: str) -> None:
    """Forget the credentials set for TARGET and SCHEME."""
    open_job(job).remove_credentials(AuthTarget[target.upper()], AuthScheme[scheme.upper()])
