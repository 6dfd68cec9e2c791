#!/bin/sh
# Debian packages openbits needs to build, test and benchmark; installs only what is missing.
set -eu
# dbus and network-manager: tests/test_cost_networkmanager.py runs its own NetworkManager on a private bus, in
# namespaces of its own. (Where systemd runs, installing network-manager also starts the system's; Debian's leaves
# the links /etc/network/interfaces configures alone.)
packages="python3-venv nginx-light aria2 curl iproute2 passwd sudo libpam-modules dbus network-manager"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "openbits: missing Debian packages:$missing - install them as root (apt-get install$missing)" >&2
    exit 1
fi
echo "openbits: installing$missing"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
