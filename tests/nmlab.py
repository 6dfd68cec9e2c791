"""A private system bus, and a real NetworkManager on it, for the cost tests.

    PrivateBus      dbus-daemon on a socket in a tmp dir: the test's "system bus"
                    (DBUS_SYSTEM_BUS_ADDRESS=unix:path=... for openbitsd and nmcli)
    NetworkManager  Debian's NetworkManager on that bus, in a network, mount and
                    UTS namespace of its own, managing two veth links:

        wan0   192.0.2.2/24      gw 192.0.2.1      metric 100  profile "wan"  (metered no, up)
        cell0  198.51.100.2/24   gw 198.51.100.1   metric 50   profile "cell" (metered yes, down)

The primary connection is the one with the best default route: "cell" when it
is up. nmcli changes things as a user would (`connection modify wan
connection.metered yes`, `connection up cell`), and NetworkManager tells the
bus. Nothing of the host is touched: NetworkManager sees only its namespace's
links, gets a tmpfs on /run and /var/lib/NetworkManager, reads a config and
keyfiles from the tmp dir only, and is killed with its process group.

Two things make it run in a container: /sys is mounted again read-only, which
NetworkManager takes for "no udev here" and manages the links without udev's
say-so (else every link stays "unmanaged"); and `auth-polkit=false`, so root
may change things without a polkit daemon.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

#: what the lab needs on the machine (Debian packages network-manager and dbus; scripts/system-deps.sh)
TOOLS = ("dbus-daemon", "NetworkManager", "nmcli", "unshare", "ip")

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""

_NM_CONFIG = """[main]
plugins=keyfile
auth-polkit=false
dns=none
rc-manager=unmanaged
hostname-mode=none
no-auto-default=*

[keyfile]
path={connections}
unmanaged-devices=interface-name:peer*

[connectivity]
enabled=false

[logging]
level=INFO
"""

#: the links, made anew in each new namespace before NetworkManager starts
_LINKS = ("ip link set lo up && ip link add wan0 type veth peer name peer-wan && ip link set peer-wan up"
          " && ip link add cell0 type veth peer name peer-cell && ip link set peer-cell up")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}")]


class PrivateBus:
    """dbus-daemon with a bus of its own on `root/bus`; anyone may own any name on it."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.socket = root / "bus"
        self.address = f"unix:path={self.socket}"
        config = root / "bus.conf"
        config.write_text(_BUS_CONFIG.format(socket=self.socket))
        with open(root / "dbus-daemon.log", "ab") as log:
            self._proc = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address"],
                                          stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # printed once it listens
        if not line.startswith(b"unix:"):
            self.close()
            raise RuntimeError(f"dbus-daemon did not start: {(root / 'dbus-daemon.log').read_text()}")

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class NetworkManager:
    """Debian's NetworkManager on `bus`, in namespaces of its own (see the module's docstring)."""

    def __init__(self, root: Path, bus: PrivateBus) -> None:
        self.root, self.bus = root, bus
        (root / "connections").mkdir(parents=True, exist_ok=True)
        (root / "conf.d").mkdir(exist_ok=True)
        self.config = root / "NetworkManager.conf"
        self.config.write_text(_NM_CONFIG.format(connections=root / "connections"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()
        try:
            self.nmcli("connection", "add", "type", "ethernet", "ifname", "wan0", "con-name", "wan",
                       "ipv4.method", "manual", "ipv4.addresses", "192.0.2.2/24", "ipv4.gateway", "192.0.2.1",
                       "ipv4.route-metric", "100", "ipv6.method", "disabled", "connection.metered", "no")
            self.nmcli("connection", "add", "type", "ethernet", "ifname", "cell0", "con-name", "cell",
                       "ipv4.method", "manual", "ipv4.addresses", "198.51.100.2/24", "ipv4.gateway", "198.51.100.1",
                       "ipv4.route-metric", "50", "ipv6.method", "disabled", "connection.metered", "yes",
                       "connection.autoconnect", "no")
            self.wait_active("wan")
        except BaseException:
            self.stop()
            raise

    def start(self) -> None:
        """NetworkManager in new namespaces; returns once it is on the bus (profiles on disk come up by themselves)."""
        nm = shutil.which("NetworkManager") or "/usr/sbin/NetworkManager"
        script = (f"mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib/NetworkManager"
                  f" && mount -t sysfs -o ro sysfs /sys && {_LINKS}"
                  f" && exec {nm} --debug --config={self.config} --config-dir={self.root / 'conf.d'}"
                  f" --system-config-dir={self.root / 'conf.d'} --state-file={self.root / 'NetworkManager.state'}"
                  f" --intern-config={self.root / 'intern.conf'} --pid-file={self.root / 'NetworkManager.pid'}")
        with open(self.root / "NetworkManager.log", "ab") as log:
            self._proc = subprocess.Popen(["unshare", "--net", "--mount", "--uts", "--fork", "--kill-child",
                                           "sh", "-c", script], env=self.env, stdout=log, stderr=log,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while self._query("-t", "-f", "RUNNING", "general") != "running":
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"NetworkManager did not start:\n{self.log()[-5000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to its process group, as systemd would stop it; its namespaces and links go with it."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)  # start_new_session: the group is unshare's pid
            self._proc.wait(20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus.address, "LC_ALL": "C"}

    def nmcli(self, *args: str) -> str:
        done = self._run("--wait", "20", *args)
        if done.returncode != 0:
            raise RuntimeError(f"nmcli {' '.join(args)}: {done.stderr.strip()}\n{self.log()[-3000:]}")
        return done.stdout.strip()

    def _query(self, *args: str) -> str:
        """nmcli's answer, or "" while NetworkManager cannot give one."""
        done = self._run(*args)
        return done.stdout.strip() if done.returncode == 0 else ""

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nmcli", *args], check=False, env=self.env, capture_output=True, text=True, timeout=30)

    def set_metered(self, profile: str, metered: bool) -> None:
        """What a user does: `nmcli connection modify PROFILE connection.metered yes|no` (applies at once)."""
        self.nmcli("connection", "modify", profile, "connection.metered", "yes" if metered else "no")

    def wait_active(self, profile: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self._query("-t", "-g", "GENERAL.STATE", "connection", "show", profile) != "activated":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{profile} not activated:\n{self.log()[-5000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        path = self.root / "NetworkManager.log"
        return path.read_text(errors="replace") if path.exists() else ""
