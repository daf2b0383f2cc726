#!/usr/bin/env bash
# The patched Xen as Debian packages: Debian 12's own xen source package with xen-patches/xen/*.patch added
# to debian/patches (after Debian's series), built by Debian's own rules (dpkg-buildpackage -B: the
# hypervisor, the tools and the libraries; no docs).  The version gets a "+sevd<N>" suffix so apt prefers
# it over the archive's and an archive update of the same upstream does not silently replace it.
# Output: <out>/*.deb (default dist/deb/xen).  Slow: see docs/install.md for the time it takes.
# Environment: SEVD_XEN_CACHE (default <repo>/.cache/xen, shared with xen-patches/check.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
OUT=$(realpath -m "${1:-$repo/dist/deb/xen}")
CACHE=${SEVD_XEN_CACHE:-$repo/.cache/xen}
# The pinned source xen-patches/check.sh builds and boots (the series is written against it).
XEN_VERSION=4.17.5+72-g01140da4e8-1
XEN_DIR=xen-4.17.5+72-g01140da4e8
LOCAL_SUFFIX=+sevd1
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
T0=$(date +%s)

need=(dpkg-dev devscripts fakeroot quilt)
missing=$(for p in "${need[@]}"; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The source, as xen-patches/check.sh fetches it (a deb-src stanza mirroring debian.sources if none).
if [ ! -d "$CACHE/src/$XEN_DIR" ]; then
    if ! apt-get indextargets --format '$(CREATED_BY)' 2>/dev/null | grep -q '^Sources$'; then
        sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
            | $SUDO tee /etc/apt/sources.list.d/sevd-deb-src.sources >/dev/null
        $SUDO apt-get update -qq
    fi
    rm -rf "$CACHE/src.tmp" && mkdir -p "$CACHE/src.tmp"
    (cd "$CACHE/src.tmp" && apt-get source -qq "xen=$XEN_VERSION" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    [ -d "$CACHE/src.tmp/$XEN_DIR" ] || { echo "deb-xen: apt-get source xen=$XEN_VERSION failed" >&2; exit 1; }
    rm -rf "$CACHE/src" && mv "$CACHE/src.tmp" "$CACHE/src"
fi

# A fresh copy of the unpacked source; our series goes after Debian's, applied by dpkg-source like theirs.
work=$CACHE/deb
rm -rf "$work" && mkdir -p "$work"
cp -a "$CACHE/src/$XEN_DIR" "$work/$XEN_DIR"
src=$work/$XEN_DIR
for p in "$repo"/xen-patches/xen/*.patch; do
    name=sevd-$(basename "$p")
    cp "$p" "$src/debian/patches/$name"
    echo "$name" >> "$src/debian/patches/series"
done
version=${XEN_VERSION}${LOCAL_SUFFIX}
{
    echo "xen ($version) bookworm; urgency=medium"
    echo
    echo "  * AMD SEV for Xen (sevd): add the series of xen-patches/xen/ to debian/patches."
    echo
    echo " -- sevd packaging <sevd@localhost>  $(date -R)"
    echo
    cat "$src/debian/changelog"
} > "$src/debian/changelog.new"
mv "$src/debian/changelog.new" "$src/debian/changelog"

echo "deb-xen: build dependencies"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get build-dep -y -qq --no-install-recommends "$src" >/dev/null

echo "deb-xen: dpkg-buildpackage -B (log: $work/build.log)"
(cd "$src" && DEB_BUILD_OPTIONS="nocheck parallel=$(nproc)" dpkg-buildpackage -B -uc -us -rfakeroot) \
    > "$work/build.log" 2>&1 || { tail -40 "$work/build.log"; echo "deb-xen: build failed (log: $work/build.log)" >&2; exit 1; }

mkdir -p "$OUT"
rm -f "$OUT"/*.deb
mv "$work"/*.deb "$OUT"/
echo "deb-xen: $(ls "$OUT"/*.deb | wc -l) packages in $OUT ($(( $(date +%s) - T0 )) s)"
ls -l "$OUT"/xen-hypervisor-*.deb
