#!/usr/bin/env bash
# The Dom0 kernel patch: applies with `patch -p1 --fuzz=0` to Debian bookworm's kernel source
# (linux-source-6.1) and the changed driver compiles out of tree against Debian's headers with
# -Werror (sev-dev.o, then the whole ccp module so modpost resolves every symbol it uses); the
# kernel's struct sev_data_* are checked against cffi_build.py's GUEST_COMMAND_BUFFERS.
# usage: check.sh [CACHE_DIR]   (default <repo>/.cache/linux)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
CACHE=$(realpath -m "${1:-$here/../../.cache/linux}")
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
die() { echo "linux-check: FAIL: $*" >&2; exit 1; }

# One kernel version for all four packages: the one linux-source-6.1 offers.
ver=$(apt-cache policy linux-source-6.1 | sed -n 's/^ *Candidate: //p')
[ -n "$ver" ] && [ "$ver" != "(none)" ] || die "apt does not know linux-source-6.1 (apt-get update?)"
abi=$(apt-cache depends "linux-headers-amd64" 2>/dev/null | sed -n 's/.*Depends: linux-headers-\(.*\)-amd64$/\1/p' | head -1)
[ -n "$abi" ] || die "cannot tell the kernel ABI from linux-headers-amd64"
pkgs="linux-source-6.1 linux-headers-$abi-amd64 linux-headers-$abi-common linux-kbuild-6.1"
echo "kernel $ver (ABI $abi)"

mkdir -p "$CACHE/debs"
for p in $pkgs; do
    ls "$CACHE/debs/${p}_${ver}_"*.deb >/dev/null 2>&1 && continue
    (cd "$CACHE/debs" && apt-get download -q "$p=$ver" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    ls "$CACHE/debs/${p}_${ver}_"*.deb >/dev/null 2>&1 || die "could not download $p=$ver"
done

root=$CACHE/root-$ver
if [ ! -e "$root/.done" ]; then
    rm -rf "$root" && mkdir -p "$root"
    for p in $pkgs; do dpkg -x "$CACHE/debs/${p}_${ver}_"*.deb "$root"; done
    # After dpkg -x the amd64 headers include the -common tree by its absolute /usr/src path.
    echo "include $root/usr/src/linux-headers-$abi-common/Makefile" > "$root/usr/src/linux-headers-$abi-amd64/Makefile"
    tar -xJf "$root/usr/src/linux-source-6.1.tar.xz" -C "$root" --wildcards \
        'linux-source-6.1/drivers/crypto/ccp/*' 'linux-source-6.1/include/linux/psp*.h' \
        'linux-source-6.1/include/uapi/linux/psp-sev.h' 'linux-source-6.1/drivers/dma/dmaengine.h'
    rm "$root/usr/src/linux-source-6.1.tar.xz"
    touch "$root/.done"
fi

# Apply to a fresh copy of the extracted subset.
work=$CACHE/work
rm -rf "$work" && mkdir -p "$work"
cp -a "$root/linux-source-6.1" "$work/linux"
for p in "$here"/*.patch; do
    echo "  $(basename "$p")"
    (cd "$work/linux" && patch -p1 --fuzz=0 --batch --quiet < "$p") || die "$(basename "$p") does not apply cleanly"
done

# Out-of-tree build: the ccp sources in the kernel's directory layout (ccp-dmaengine.c includes
# "../../dma/dmaengine.h") plus the patched headers, which must win over the installed ones.
mod=$work/oot/drivers/crypto/ccp
mkdir -p "$mod/include/linux" "$mod/include/uapi/linux" "$work/oot/drivers/dma"
cp "$work/linux/drivers/crypto/ccp/"* "$mod/"
cp "$work/linux/include/linux/"psp*.h "$mod/include/linux/"
cp "$work/linux/include/uapi/linux/psp-sev.h" "$mod/include/uapi/linux/"
cp "$work/linux/drivers/dma/dmaengine.h" "$work/oot/drivers/dma/"
printf 'NOSTDINC_FLAGS += -I$(src)/include -I$(src)/include/uapi\ninclude $(src)/Makefile\n' > "$mod/Kbuild"
kdir=$root/usr/src/linux-headers-$abi-amd64
make -s -C "$kdir" M="$mod" sev-dev.o KCFLAGS=-Werror || die "sev-dev.o does not compile"
grep -q "$mod/include/uapi/linux/psp-sev.h" "$mod/.sev-dev.o.cmd" || die "sev-dev.o was not built against the patched psp-sev.h"
# The firmware command buffers the kernel hands to the PSP must be byte for byte the ones userspace
# lays out (cffi_build.py's GUEST_COMMAND_BUFFERS): static assertions generated from that file.
python3 "$here/layout_check.py" "$here/../../cffi_build.py" > "$mod/sevd-layout.c"
make -s -C "$kdir" M="$mod" sevd-layout.o KCFLAGS=-Werror || die "struct sev_data_* differ from cffi_build.py's GUEST_COMMAND_BUFFERS"
echo "  struct sev_data_* match GUEST_COMMAND_BUFFERS ($(grep -c static_assert "$mod/sevd-layout.c") assertions)"
rm -f "$mod/sevd-layout.c" "$mod/sevd-layout.o" "$mod/.sevd-layout.o.cmd"
make -s -C "$kdir" M="$mod" modules KCFLAGS=-Werror 2>&1 | tee "$work/modules.log"
grep -q 'undefined!' "$work/modules.log" && die "ccp.ko uses symbols the kernel does not export"
[ -f "$mod/ccp.ko" ] || die "ccp.ko was not built"
echo "linux-check: PASS (sev-dev.o and ccp.ko built against the patched psp-sev.h; buffer layouts match cffi_build.py)"
