#!/bin/sh
# /etc/pam.d/openbits: how openbitsd checks a helper token's password (LogonUser). Root only;
# without it the daemon falls back to the `login` service and says so in its log.
set -eu
target=/etc/pam.d/openbits
[ -e "$target" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "openbits: $target is missing - run scripts/install-pam.sh as root" >&2
    exit 0
fi
install -m 0644 "$(dirname "$0")/../packaging/pam.d/openbits" "$target"
echo "openbits: installed $target"
