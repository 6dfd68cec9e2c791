#!/bin/sh
# make install: the package in a virtualenv of its own under PREFIX, its three commands linked into
# PREFIX/bin, the systemd units, the PAM service, a commented default configuration, completions and
# manual pages. Every path it puts in place is listed in PREFIX/lib/openbits/installed-files, which
# packaging/uninstall.sh reads back. Usage: install.sh DESTDIR PREFIX SYSCONFDIR PYTHON MANDIR
set -eu
destdir=$1 prefix=$2 sysconfdir=$3 python=$4 mandir=$5
here=$(cd "$(dirname "$0")" && pwd)
lib=$prefix/lib/openbits
app=$lib/venv
manifest=$destdir$lib/installed-files
if [ -e "$manifest" ]; then
    echo "openbits: already installed under $prefix; run make uninstall first" >&2
    exit 1
fi
mkdir -p "$destdir$lib"
: > "$manifest"

record() { echo "$1" >> "$manifest"; }
# put MODE SOURCE PATH: install a file at PATH (below DESTDIR) and record it
put() { install -D -m "$1" "$2" "$destdir$3"; record "$3"; }

"$python" -m venv "$destdir$app"
record "$app/"
"$destdir$app/bin/pip" install --quiet --disable-pip-version-check "$here/.."
for command in openbitsd openbits openbits-server; do
    mkdir -p "$destdir$prefix/bin"
    ln -sfn "../lib/openbits/venv/bin/$command" "$destdir$prefix/bin/$command"
    record "$prefix/bin/$command"
    # Click's own completion scripts (each asks the command itself when the shell completes)
    variable=_$(echo "$command" | tr 'a-z-' 'A-Z_')_COMPLETE
    completions=$(mktemp -d)
    env "$variable=bash_source" "$destdir$app/bin/$command" > "$completions/bash"
    env "$variable=zsh_source" "$destdir$app/bin/$command" > "$completions/zsh"
    env "$variable=fish_source" "$destdir$app/bin/$command" > "$completions/fish"
    put 0644 "$completions/bash" "$prefix/share/bash-completion/completions/$command"
    put 0644 "$completions/zsh" "$prefix/share/zsh/site-functions/_$command"
    put 0644 "$completions/fish" "$prefix/share/fish/vendor_completions.d/$command.fish"
    rm -r "$completions"
done
# A virtualenv made below DESTDIR names that path in its scripts: they must name the final one.
if [ -n "$destdir" ]; then
    grep -rlF "$destdir$app" "$destdir$app/bin" | while read -r script; do
        sed -i "s#$destdir$app#$app#g" "$script"
    done
fi

units=$(mktemp -d)
for unit in openbitsd.socket openbitsd.service openbits-server.service; do
    sed "s#@BINDIR@#$prefix/bin#g" "$here/systemd/$unit" > "$units/$unit"
    put 0644 "$units/$unit" "$prefix/lib/systemd/system/$unit"
done
for unit in openbitsd.socket openbitsd.service; do
    sed "s#@BINDIR@#$prefix/bin#g" "$here/systemd/user/$unit" > "$units/user-$unit"
    put 0644 "$units/user-$unit" "$prefix/lib/systemd/user/$unit"
done
rm -r "$units"

put 0644 "$here/pam.d/openbits" "$sysconfdir/pam.d/openbits"
# An administrator's configuration is never overwritten, nor removed by uninstall.
config=$sysconfdir/openbits/openbitsd.toml
if [ -e "$destdir$config" ]; then
    echo "openbits: $destdir$config exists; left as it is (the default is $here/openbitsd.toml)"
else
    put 0644 "$here/openbitsd.toml" "$config"
fi

for page in "$mandir"/man*/*; do
    [ -e "$page" ] || continue
    section=$(basename "$(dirname "$page")")
    put 0644 "$page" "$prefix/share/man/$section/$(basename "$page")"
done
echo "openbits: installed under $destdir$prefix ($(wc -l < "$manifest") paths in $lib/installed-files)"
[ -z "$destdir" ] && echo "openbits: now systemctl daemon-reload && systemctl enable --now openbitsd.socket"
exit 0
