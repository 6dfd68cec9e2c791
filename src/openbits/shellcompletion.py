"""Shell completion for the argparse commands (openbitsd, openbits-server) through Click's own mechanism.

Their options are mirrored into a click.Command only to complete them: `_OPENBITSD_COMPLETE=bash_source
openbitsd` prints the script, as `openbits` does, and the shell then asks the command itself.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click


def as_click(parser: argparse.ArgumentParser) -> click.Command:
    """The parser's options as a click.Command (choices complete as choices, paths as paths). Click is
    imported here, when a shell asks: the daemon would otherwise carry its 4 MiB for its whole life."""
    import click

    params: list[click.Parameter] = []
    for action in parser._actions:  # argparse has no public listing of its actions
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if action.nargs == 0:
            params.append(click.Option(action.option_strings, is_flag=True, help=action.help))
            continue
        kind: click.ParamType = (click.Choice([str(c) for c in action.choices]) if action.choices
                                 else click.Path() if action.type is Path or action.metavar in ("FILE", "DIR")
                                 else click.STRING)
        params.append(click.Option(action.option_strings, type=kind, help=action.help))
    return click.Command(parser.prog, params=params, help=parser.description, add_help_option=True)


def answer_completion(parser: argparse.ArgumentParser) -> None:
    """When the shell asks (_PROG_COMPLETE is set), answer it and exit; otherwise return at once."""
    variable = f"_{parser.prog.replace('-', '_').upper()}_COMPLETE"
    if variable in os.environ:
        as_click(parser).main(prog_name=parser.prog, complete_var=variable)
