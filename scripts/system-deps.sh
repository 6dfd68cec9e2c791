#!/bin/sh
# Debian packages openbits needs to build, test and benchmark; installs only what is missing.
set -eu
# dbus and network-manager: tests/test_cost_networkmanager.py runs its own NetworkManager on a private bus, in
# namespaces of its own, as the tests run their own nginx: the packages' system services are not started by the
# install (see policy-rc.d below), so a developer's machine keeps its network set-up and port 80 as they were.
# systemd: systemd-creds seals the key of the credentials stored with jobs (identity/sealing.py; the tests give
# it a host key of their own, tests/test_credentials_at_rest.py); systemd-analyze verify, systemd-socket-activate
# and systemd-journald for tests/test_systemd.py and tests/test_logs.py; systemd-container and debootstrap boot
# the real units in tests/test_service_units.py; man-db renders the manual pages make install builds.
# swift-* and memcached: tests/servers/swift.py runs an OpenStack Swift all-in-one with its S3 API for
# openbits-server's object-storage backend (tests/test_upload_farm.py).
# krb5-*, apache2 + libapache2-mod-auth-gssapi: the tests' own KDC and Negotiate server (tests/servers/kerberos.py);
# libkrb5-dev and gcc: pip builds the gssapi and krb5 packages against them (no wheels for this platform);
# gss-ntlmssp: Apache's NTLM acceptor; squid: the authenticating proxy (tests/servers/squid.py); samba: the
# SMB share (tests/servers/samba.py).
packages="python3-venv nginx-light aria2 curl iproute2 passwd sudo libpam-modules dbus network-manager systemd
systemd-container debootstrap man-db util-linux swift swift-proxy swift-account swift-container swift-object
memcached
krb5-kdc krb5-admin-server krb5-user libkrb5-dev gcc apache2 libapache2-mod-auth-gssapi gss-ntlmssp squid samba smbclient"
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
# invoke-rc.d and deb-systemd-invoke ask /usr/sbin/policy-rc.d before starting a service; 101 = not now.
# A machine's own policy (Docker images have one) is left as it is.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# openbits scripts/system-deps.sh, while it installs: start no service\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
