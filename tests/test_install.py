"""Installing openbits as a service: the wheel, `make install`/`make uninstall`, the units, completion, man pages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from openbits import JobType
from openbits.model.config import Config

from .daemon import DaemonProcess

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
COMMANDS = ("openbitsd", "openbits", "openbits-server")
BIN = Path(sys.prefix) / "bin"


def _run(*command: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_virtualenv(tmp_path: Path) -> None:
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", REPO)
    wheels = list((tmp_path / "dist").glob("openbits-*.whl"))
    assert len(wheels) == 1
    _run("/usr/bin/python3", "-m", "venv", tmp_path / "venv")
    _run(tmp_path / "venv/bin/pip", "install", "--quiet", wheels[0])
    for command in COMMANDS:
        assert re.fullmatch(rf"{command}(, version)? 0\.\d+\.\d+\n", _run(tmp_path / "venv/bin" / command,
                                                                           "--version").stdout)


def _verify(units: list[Path], environ: dict[str, str], *options: str) -> None:
    done = subprocess.run(["systemd-analyze", *options, "verify", *map(str, units)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **environ})
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def _units_for(bindir: Path, out: Path) -> tuple[list[Path], list[Path]]:
    """The packaged units with ExecStart= naming `bindir` (where the commands exist here)."""
    system, user = out / "system", out / "user"
    for folder, source in ((system, PACKAGING / "systemd"), (user, PACKAGING / "systemd/user")):
        folder.mkdir(parents=True)
        for unit in source.glob("*.s*"):
            (folder / unit.name).write_text(unit.read_text().replace("@BINDIR@", str(bindir)))
    return sorted(system.iterdir()), sorted(user.iterdir())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing (package systemd)")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    system, user = _units_for(BIN, tmp_path)
    assert [u.name for u in system] == ["openbits-server.service", "openbitsd.service", "openbitsd.socket"]
    assert [u.name for u in user] == ["openbitsd.service", "openbitsd.socket"]
    # the manual pages named by Documentation= are checked by the install test, where they exist
    _verify(system, {}, "--man=no")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    _verify(user, {"XDG_RUNTIME_DIR": str(runtime)}, "--user", "--man=no")
    socket = (PACKAGING / "systemd/openbitsd.socket").read_text()
    assert "ListenStream=/run/openbits/openbits.sock" in socket and "SocketMode=0666" in socket
    service = (PACKAGING / "systemd/openbitsd.service").read_text()
    for directive in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectHome=no", "PrivateTmp=no"):
        assert f"\n{directive}" in service


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing (package systemd)")
def test_make_install_then_uninstall_leaves_nothing(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    stage.mkdir()
    _run("make", "-C", REPO, "install", f"DESTDIR={stage}", "PREFIX=/usr/local", f"MAN_PYTHON={sys.executable}")
    prefix = stage / "usr/local"
    app = prefix / "lib/openbits/venv"
    for command in COMMANDS:
        link = prefix / "bin" / command
        assert link.is_symlink() and link.resolve() == (app / "bin" / command).resolve()
        # the venv's scripts name the final path, not the staging one
        assert (app / "bin" / command).read_text().splitlines()[0] == "#!/usr/local/lib/openbits/venv/bin/python3"
        for completion in (prefix / f"share/bash-completion/completions/{command}",
                           prefix / f"share/zsh/site-functions/_{command}",
                           prefix / f"share/fish/vendor_completions.d/{command}.fish"):
            assert f"_{command.replace('-', '_').upper()}_COMPLETE" in completion.read_text()
    assert _run(app / "bin/python", "-m", "openbits.daemon", "--version").stdout == "openbitsd 0.1.0\n"
    assert (stage / "etc/pam.d/openbits").read_text() == (PACKAGING / "pam.d/openbits").read_text()
    config = stage / "etc/openbits/openbitsd.toml"
    assert config.read_text() == (PACKAGING / "openbitsd.toml").read_text()
    assert _run(app / "bin/python", "-m", "openbits.daemon", "--check-config", config).stdout.endswith("valid\n")
    man = prefix / "share/man"
    for page in ("man1/openbits.1", "man1/openbits-addfile.1", "man8/openbitsd.8", "man8/openbits-server.8",
                 "man5/openbitsd.toml.5"):
        shown = _run("man", "-l", man / page, env={**os.environ, "MANWIDTH": "100"}).stdout
        assert "NAME" in shown and ("SEE ALSO" in shown or page.startswith("man1/"))
    assert "max_jobs_per_user = 300" in _run("man", "-l", man / "man5/openbitsd.toml.5").stdout
    # the installed units, with ExecStart= where the staged commands are, and their manual pages
    units = tmp_path / "units"
    system, user = [], []
    for kind, found in (("system", system), ("user", user)):
        (units / kind).mkdir(parents=True)
        for unit in (prefix / f"lib/systemd/{kind}").iterdir():
            text = unit.read_text()
            assert unit.suffix == ".socket" or "ExecStart=/usr/local/bin/openbits" in text
            (units / kind / unit.name).write_text(text.replace("/usr/local/bin", str(prefix / "bin")))
            found.append(units / kind / unit.name)
    _verify(system, {"MANPATH": str(man)})
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    _verify(user, {"MANPATH": str(man), "XDG_RUNTIME_DIR": str(runtime)}, "--user")

    _run("make", "-C", REPO, "uninstall", f"DESTDIR={stage}", "PREFIX=/usr/local")
    assert not stage.exists() or not [p for p in stage.rglob("*") if not p.is_dir()]


def test_an_administrators_config_survives_uninstall(tmp_path: Path) -> None:
    """uninstall.sh removes the default configuration only while it is unchanged."""
    stage = tmp_path / "stage"
    (stage / "usr/local/lib/openbits").mkdir(parents=True)
    (stage / "etc/openbits").mkdir(parents=True)
    (stage / "etc/openbits/openbitsd.toml").write_text("max_jobs_per_user = 10\n")
    (stage / "etc/pam.d").mkdir(parents=True)
    (stage / "etc/pam.d/openbits").write_text("x")
    (stage / "usr/local/lib/openbits/installed-files").write_text("/etc/openbits/openbitsd.toml\n/etc/pam.d/openbits\n")
    done = _run("sh", PACKAGING / "uninstall.sh", stage, "/usr/local")
    assert "was changed; kept" in done.stdout
    assert sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if not p.is_dir()) == [
        "etc/openbits/openbitsd.toml"]


def test_the_default_config_is_the_code_s_defaults() -> None:
    """packaging/openbitsd.toml, every setting uncommented, is valid and (but for the examples) the defaults."""
    text = (PACKAGING / "openbitsd.toml").read_text()
    uncommented = "\n".join(line[1:] for line in text.splitlines() if re.match(r"#(\[|\w+ = )", line))
    raw = tomllib.loads(uncommented)
    config = Config.from_dict(raw)
    examples = {"admin_group", "proxy", "bandwidth_schedule", "metrics_listen", "users_service_group", "tls_ca_file"}  # no default a TOML value can say
    for field in Config.__dataclass_fields__:
        if field not in examples:
            assert getattr(config, field) == getattr(Config(), field), field
    keys = {k for k, v in raw.items() if not isinstance(v, dict)} | {f"{s}.{k}" for s, t in raw.items()
                                                                     if isinstance(t, dict) for k in t}
    # every field is described: top-level keys and section keys, the schedule counting once, and the keys that
    # fill one field with another (proxy: http_proxy; bandwidth: limit) counting once too
    same_field = {"proxy.https_proxy", "proxy.no_proxy", "bandwidth.high", "bandwidth.normal", "bandwidth.low"}
    assert len(keys - same_field) == len(Config.__dataclass_fields__)


def test_completion_offers_job_guids_and_names(daemon: DaemonProcess) -> None:
    with daemon.manager() as manager:
        job = manager.create_job("nightly-sync", JobType.DOWNLOAD)
    environ = {**os.environ, "_OPENBITS_COMPLETE": "bash_complete", "COMP_CWORD": "4",
               "COMP_WORDS": f"openbits --socket {daemon.socket} info "}
    offered = _run(BIN / "openbits", env=environ).stdout.split()
    assert f"plain,{job.id}" in offered and "plain,nightly-sync" in offered
    environ["COMP_WORDS"] += "night"
    assert _run(BIN / "openbits", env=environ).stdout.split() == ["plain,nightly-sync"]
    # no daemon: nothing offered, none started
    environ["COMP_WORDS"] = f"openbits --socket {daemon.root / 'none.sock'} info "
    assert _run(BIN / "openbits", env=environ).stdout.split() == []
    assert not (daemon.root / "none.sock").exists()
    for command in COMMANDS:
        variable = f"_{command.replace('-', '_').upper()}_COMPLETE"
        for shell in ("bash", "zsh", "fish"):
            assert variable in _run(BIN / command, env={**os.environ, variable: f"{shell}_source"}).stdout
    daemon_options = _run(BIN / "openbitsd", env={**os.environ, "_OPENBITSD_COMPLETE": "bash_complete",
                                                  "COMP_WORDS": "openbitsd --log-target ", "COMP_CWORD": "2"})
    assert daemon_options.stdout.split() == ["plain,auto", "plain,journal", "plain,stderr"]
