#!/usr/bin/env bash
# The Xen and Linux patch check, end to end, on a fresh Debian bookworm machine:
#   1. install what it needs (apt), fetch the pinned Xen source into the cache,
#   2. apply xen/*.patch with `patch -p1 --fuzz=0` (any fuzz or reject fails), build the hypervisor,
#   3. boot it twice under QEMU (software emulation) with Debian's kernel as Dom0:
#        sev=0    "SEV: not available", the domctl says so and refuses MAKE_SEV, a PVH guest boots
#        sev=test the loud insecure-mode log, the ASID ranges, and the whole domctl flow (INFO,
#                 MAKE_SEV, GET_RANGES, ENABLE, a PVH SEV-flagged guest boots, its ASID is dirty
#                 after it dies until ASID_FLUSHED, refusals for a domain that ran / no ENABLE / ES)
#   4. the Linux patch: applies to Debian's kernel source, sev-dev.o compiles out of tree.
# Console markers decide pass/fail; everything is bounded by `timeout`.  Idempotent: a second run
# reuses the cache (the Xen tree is rebuilt from scratch only when the patch series changed).
# Environment: SEVD_XEN_CACHE (default <repo>/.cache/xen), SEVD_BOOT_TIMEOUT (s, default 420),
# SEVD_SKIP_LINUX=1 / SEVD_SKIP_BOOT=1 to leave a part out.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
CACHE=${SEVD_XEN_CACHE:-$repo/.cache/xen}
BOOT_TIMEOUT=${SEVD_BOOT_TIMEOUT:-420}
XEN_VERSION=4.17.5+72-g01140da4e8-1
XEN_DIR=xen-4.17.5+72-g01140da4e8
APT_PACKAGES="bison flex gcc make python3 dpkg-dev xz-utils cpio qemu-system-x86 linux-image-amd64
busybox-static xen-utils-4.17 xenstore-utils libxencall1 python3-cffi python3-cryptography"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

T0=$(date +%s)
declare -a TIMINGS=()
step_start() { STEP=$1; STEP_T=$(date +%s); echo "== $STEP"; }
step_end() { local d=$(( $(date +%s) - STEP_T )); TIMINGS+=("$(printf '%-34s %4ss' "$STEP" "$d")"); echo "== $STEP: ${d}s"; }
die() { echo "xen-check: FAIL: $*" >&2; exit 1; }

mkdir -p "$CACHE"

# ---- 1. packages and source ---------------------------------------------------------------------
step_start "packages"
missing=$(for p in $APT_PACKAGES; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
    echo "installing: $missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
step_end

step_start "xen source $XEN_VERSION"
if [ ! -d "$CACHE/src/$XEN_DIR" ]; then
    # apt-get source needs a deb-src stanza: mirror the deb stanzas of debian.sources.
    if ! apt-get indextargets --format '$(CREATED_BY)' 2>/dev/null | grep -q '^Sources$'; then
        sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
            | $SUDO tee /etc/apt/sources.list.d/sevd-deb-src.sources >/dev/null
        $SUDO apt-get update -qq
    fi
    rm -rf "$CACHE/src.tmp" && mkdir -p "$CACHE/src.tmp"
    (cd "$CACHE/src.tmp" && apt-get source -qq "xen=$XEN_VERSION" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    [ -d "$CACHE/src.tmp/$XEN_DIR" ] || die "apt-get source xen=$XEN_VERSION did not unpack $XEN_DIR"
    rm -rf "$CACHE/src" && mv "$CACHE/src.tmp" "$CACHE/src"
fi
step_end

# ---- 2. apply and build -------------------------------------------------------------------------
step_start "apply xen patches"
series=$(cat "$here"/xen/*.patch | sha256sum | cut -c1-16)
build=$CACHE/build/$XEN_DIR
if [ "$(cat "$CACHE/build/.series" 2>/dev/null)" != "$series" ] || [ ! -x "$build/xen/xen" ]; then
    rm -rf "$CACHE/build" && mkdir -p "$CACHE/build"
    cp -a "$CACHE/src/$XEN_DIR" "$build"
    for p in "$here"/xen/*.patch; do
        echo "  $(basename "$p")"
        (cd "$build" && patch -p1 --fuzz=0 --batch --quiet < "$p") || die "$(basename "$p") does not apply cleanly"
    done
    fresh=1
else
    echo "  series $series already applied in $build"
    fresh=0
fi
step_end

step_start "build xen"
if [ "$fresh" = 1 ]; then
    make -C "$build/xen" defconfig >/dev/null
fi
make -C "$build/xen" -j"$(nproc)" > "$CACHE/build.log" 2>&1 || { tail -40 "$CACHE/build.log"; die "Xen build failed (log: $CACHE/build.log)"; }
[ -x "$build/xen/xen" ] || die "no xen/xen after the build"
echo "$series" > "$CACHE/build/.series"
step_end

# ---- 3. boot under QEMU -------------------------------------------------------------------------
if [ "${SEVD_SKIP_BOOT:-0}" != 1 ]; then
    step_start "initramfs"
    kernel=$(ls /boot/vmlinuz-*-amd64 | sort -V | tail -1)
    kver=${kernel#/boot/vmlinuz-}
    bash "$here/qemu/build-initramfs.sh" "$CACHE/boot" "$build" "$kernel" "/lib/modules/$kver" >/dev/null
    step_end

    # boot NAME XEN_SEV_OPTION DOM0_MODE
    boot() {
        local name=$1 sev=$2 mode=$3 log=$CACHE/boot/console-$1.log rc=0
        step_start "boot $name (sev=$sev)"
        timeout --foreground -k 10 "$BOOT_TIMEOUT" qemu-system-x86_64 \
            -machine q35 -cpu max -smp 2 -m 2048 -nographic -no-reboot -monitor none \
            -kernel "$build/xen/xen" \
            -append "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=1024M smap=0 smep=0 sev=$sev" \
            -initrd "$kernel console=hvc0 earlyprintk=xen quiet sevd_check=$mode,$CACHE/boot/dom0.cpio.gz" \
            < /dev/null > "$log" 2>&1 || rc=$?
        tr -d '\r' < "$log" > "$log.txt"
        step_end
        grep -a 'SEVD-CHECK\|SEVD-DOM0\|^(XEN) SEV\|(XEN).*SEV' "$log.txt" | sed 's/^/  | /'
        [ "$rc" = 124 ] && die "boot $name timed out after ${BOOT_TIMEOUT}s (console: $log.txt)"
        grep -aq 'SEVD-CHECK-DONE failures=0' "$log.txt" || die "boot $name: checks failed or did not finish (console: $log.txt)"
        grep -aq 'SEVD-CHECK FAIL' "$log.txt" && die "boot $name: a check failed (console: $log.txt)"
        return 0
    }
    need() { grep -aEq -- "$2" "$CACHE/boot/console-$1.log.txt" || die "boot $1: no console line matching /$2/"; }

    boot plain 0 plain
    need plain '\(XEN\) SEV: not available'
    need plain 'HVM: SVM enabled'
    boot test test test
    need test 'SEV: \*\*\* sev=test: TEST MODE, NOT SECURE'
    need test 'SEV: 7 ASIDs, min SEV ASID 4, C-bit 47 \(TEST MODE, NOT SECURE\)'
    need test 'SEV: other HVM guests rotate through ASIDs 8\.\.'
    need test 'SEV domain, ASID 4, C-bit 47'
    need test 'SEV ASID 4 released, dirty until DF_FLUSH'
    need test 'SEV domain started before SEV was enabled'
    need test 'SEV domctl refused \(-16\): MAKE_SEV: the domain has already run'
    need test 'SEV: XENMEM_decrease_reservation refused: an SEV domain'
    need test 'SEV: XENMEM_set_pod_target refused: an SEV domain'
    need test 'SEV: [0-9]+ page references kept until RELEASE \(after DECOMMISSION\)'
    need test 'SEV: RELEASE dropped [0-9]+ page references'
    need test 'SEV: save/restore/migration refused \(XENMEM_maximum_gpfn from another domain\)'
    need test 'SEVD-CHECK ok: xl save of an SEV guest refused'
    need test 'SEVD-CHECK ok: python wbinvd_all \+ asids_flushed'
    need test 'SEV: READ_SPA refused: 0x100000 in \[0x100000, \+0x1000\) is not RAM of'
fi

# ---- 4. the Linux patch -------------------------------------------------------------------------
if [ "${SEVD_SKIP_LINUX:-0}" != 1 ]; then
    step_start "linux patch: apply + compile"
    bash "$here/linux/check.sh" "$repo/.cache/linux"
    step_end
fi

echo
echo "xen-check: PASS"
printf '  %s\n' "${TIMINGS[@]}"
echo "  total                              $(( $(date +%s) - T0 ))s"
