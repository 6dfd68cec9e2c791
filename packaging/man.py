"""Build the manual pages from the code: `python packaging/man.py OUTDIR` (make man, make install).

openbits(1) and a page per verb come from the Click commands (click-man), openbitsd(8) and
openbits-server(8) from their argument parsers (argparse-manpage), openbitsd.toml(5) from the
commented default configuration packaging/openbitsd.toml (which tests/test_install.py checks
against model/config.py).
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from build_manpages.manpage import Manpage
from click_man.core import write_man_pages

from openbits.cli.main import cli
from openbits.daemon.options import parser as daemon_parser
from openbits.server.main import _parser as server_parser
from openbits.version import __version__

HERE = Path(__file__).resolve().parent
SEE_ALSO = "openbits(1), openbitsd(8), openbits-server(8), openbitsd.toml(5), systemd.socket(5), journalctl(1)"


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def argparse_page(parser_: object, section: int, out: Path) -> Path:
    page = Manpage(parser_)
    page.section = section
    page.source = f"openbits {__version__}"
    page.manual = "openbits"
    path = out / f"man{section}" / f"{page.prog}.{section}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{page}\n.SH SEE ALSO\n{_roff(SEE_ALSO)}\n")
    return path


def config_page(out: Path, date: str) -> Path:
    """openbitsd.toml(5): each commented setting of the default file with the comment above it."""
    body = [f'.TH OPENBITSD.TOML 5 "{date}" "openbits {__version__}" "openbits"',
            ".SH NAME", "openbitsd.toml \\- configuration of the openbits daemon",
            ".SH SYNOPSIS", "/etc/openbits/openbitsd.toml, $XDG_CONFIG_HOME/openbits/openbitsd.toml",
            ".SH DESCRIPTION"]
    lines = (HERE / "openbitsd.toml").read_text().splitlines()
    intro = []
    while lines and lines[0].startswith("# "):
        intro.append(lines.pop(0)[2:])
    body.append(_roff(" ".join(intro)))
    body.append(".SH SETTINGS")
    comment: list[str] = []
    for line in lines:
        if line.startswith("# "):
            comment.append(line[2:])
        elif line.startswith("#["):
            body += [f".SS {_roff(line[1:])}", _roff(" ".join(comment))] if comment else [f".SS {_roff(line[1:])}"]
            comment = []
        elif line.startswith("#") and "=" in line:
            key, _, value = line[1:].partition("=")
            body += [".TP", f"\\fB{_roff(key.strip())}\\fR = {_roff(value.strip())}"]
            if comment:
                body.append(_roff(" ".join(comment)))
            comment = []
    body += [".SH SEE ALSO", _roff(SEE_ALSO)]
    path = out / "man5" / "openbitsd.toml.5"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(body) + "\n")
    return path


def main(out: Path) -> None:
    date = datetime.date.today().isoformat()
    argparse_page(daemon_parser(), 8, out)
    argparse_page(server_parser(), 8, out)
    (out / "man1").mkdir(parents=True, exist_ok=True)
    write_man_pages("openbits", cli, version=__version__, target_dir=str(out / "man1"), date=date)
    config_page(out, date)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
