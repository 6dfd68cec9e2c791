#!/bin/sh
# Debian packages openbits needs to build, test and benchmark; installs only what is missing.
set -eu
packages="python3-venv nginx-light aria2 curl iproute2 passwd sudo libpam-modules"
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
