#!/bin/sh
# make uninstall: removes exactly what packaging/install.sh recorded, then the folders it left empty.
# The configuration file is kept when an administrator changed it. Usage: uninstall.sh DESTDIR PREFIX
set -eu
destdir=$1 prefix=$2
here=$(cd "$(dirname "$0")" && pwd)
lib=$prefix/lib/openbits
manifest=$destdir$lib/installed-files
if [ ! -e "$manifest" ]; then
    echo "openbits: nothing installed under $destdir$prefix ($manifest is missing)"
    exit 0
fi
prune() { rmdir -p --ignore-fail-on-non-empty "$1" 2>/dev/null || true; }
while read -r path; do
    case $path in
        */) rm -rf "$destdir$path" ;;
        */openbits/openbitsd.toml)
            if cmp -s "$destdir$path" "$here/openbitsd.toml"; then
                rm -f "$destdir$path"
            else
                echo "openbits: $destdir$path was changed; kept"
            fi ;;
        *) rm -f "$destdir$path" ;;
    esac
    prune "$(dirname "$destdir$path")"
done < "$manifest"
rm -f "$manifest"
prune "$destdir$lib"
echo "openbits: uninstalled from $destdir$prefix"
