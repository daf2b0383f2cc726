#!/usr/bin/env bash
# `make deb`: the sevd and sevd-ccp-dkms packages, built by Debian's tools (dpkg-buildpackage, pybuild,
# dh_dkms) in a staged copy of the tree, into <out> (default dist/deb).  Installs what it needs (apt).
# pyxs and ioctl-opt, which Debian does not package, are fetched once from PyPI at pinned versions and
# hashes into .cache/vendor and bundled into /usr/lib/sevd/vendor with their licences.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
OUT=$(realpath -m "${1:-$repo/dist/deb}")
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
# Debian's own python3 and tools, whatever else is first on PATH (a pyenv, a venv).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
T0=$(date +%s)

TOOLS="dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all-dev python3-setuptools python3-wheel
python3-cffi python3-click python3-cryptography python3-pip linux-libc-dev libffi-dev dh-dkms fakeroot"
missing=$(for p in $TOOLS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
    echo "deb: installing $missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The bundled libraries: exact files, checked by hash.
VENDOR_CACHE=$repo/.cache/vendor
declare -A VENDOR=(
    [pyxs-0.4.1.tar.gz]=c56c88114651eda15f074d1b32fd465a5846d8e6e1f8aa296c7fd0292b7638ad
    [ioctl_opt-1.3.1-py3-none-any.whl]=7617a734e7083fd0ff5607c821ca67f75f4dd009c55b3f96db5c55621e64ee9a
)
mkdir -p "$VENDOR_CACHE"
for f in "${!VENDOR[@]}"; do
    if ! echo "${VENDOR[$f]}  $VENDOR_CACHE/$f" | sha256sum -c --quiet 2>/dev/null; then
        case $f in
            pyxs-*) spec=pyxs==0.4.1; binary=(--no-binary :all:) ;;
            *) spec=ioctl-opt==1.3.1; binary=(--only-binary :all:) ;;
        esac
        python3 -m pip download -q --no-deps "${binary[@]}" "$spec" -d "$VENDOR_CACHE" 2>&1 | grep -v '^WARNING: Location' || true
        echo "${VENDOR[$f]}  $VENDOR_CACHE/$f" | sha256sum -c --quiet || { echo "deb: $f: wrong hash" >&2; exit 1; }
    fi
done

# The staged source: what git tracks (plus uncommitted edits), without the simulators, tests and benches.
version=$(dpkg-parsechangelog -l "$here/changelog" -SVersion)
stage=$repo/.cache/deb-build
src=$stage/sevd-${version%-*}
rm -rf "$stage" && mkdir -p "$src"
(cd "$repo" && git ls-files -co --exclude-standard -z | grep -zv '^\(sim\|tests\|bench\)/' \
    | xargs -0 -I{} sh -c 'test -e "{}" && cp -a --parents "{}" "'"$src"'"/ || true')
mkdir -p "$src/vendor/ioctl_opt-1.3.1.licenses"
tar -xzf "$VENDOR_CACHE/pyxs-0.4.1.tar.gz" -C "$stage" pyxs-0.4.1/pyxs pyxs-0.4.1/LICENSE
cp -a "$stage/pyxs-0.4.1/pyxs" "$src/vendor/" && cp "$stage/pyxs-0.4.1/LICENSE" "$src/vendor/LICENSE.pyxs"
python3 - "$VENDOR_CACHE/ioctl_opt-1.3.1-py3-none-any.whl" "$src/vendor" <<'PY'
import sys, zipfile, pathlib
whl, out = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith("ioctl_opt/"):
            z.extract(name, out)
        elif "/licenses/" in name:
            (out / "ioctl_opt-1.3.1.licenses" / pathlib.Path(name).name).write_bytes(z.read(name))
PY
rm -f "$src"/sevd/_psp*.so "$src"/sevd/_psp.c

echo "deb: dpkg-buildpackage (log: $stage/build.log)"
(cd "$src" && dpkg-buildpackage -b -uc -us -rfakeroot) > "$stage/build.log" 2>&1 \
    || { tail -40 "$stage/build.log"; echo "deb: build failed (log: $stage/build.log)" >&2; exit 1; }

mkdir -p "$OUT"
rm -f "$OUT"/sevd_*.deb "$OUT"/sevd-ccp-dkms_*.deb
mv "$stage"/*.deb "$OUT"/
if dpkg-deb -c "$OUT"/sevd_*.deb | grep -q sevd_sim; then echo "deb: sevd_sim in the package" >&2; exit 1; fi
echo "deb: built in $(( $(date +%s) - T0 )) s:"
ls -l "$OUT"/*.deb
