#!/usr/bin/env bash
# Build the two initramfs images the QEMU boot check uses:
#   OUT/dom0.cpio.gz   busybox, Xen's Dom0 modules, Debian's xenstored/xl/xen-init-dom0/xenconsoled
#                      (xen-utils-4.17) and xenstore-utils with their libraries, the sev-domctl test
#                      program, and the PVH guest (kernel, initramfs, cfg)
#   OUT/guest.cpio.gz  busybox and an init that prints a marker and powers off
#   with VENV (the whole-system run): also the project's runtime packages from VENV, sevd with its
#   compiled ioctl module, the sevd/xl-sev/sev-owner commands and xen-patches/qemu/system/
# usage: build-initramfs.sh OUT XEN_TREE KERNEL MODULES_DIR [VENV]
#   XEN_TREE: the patched Xen source tree (its public headers build sev-domctl)
set -euo pipefail

out=$(realpath -m "$1"); tree=$(realpath "$2"); kernel=$3; moddir=$4; venv=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
XENBIN=/usr/lib/xen-4.17/bin

rm -rf "$out/dom0" "$out/guest"
mkdir -p "$out/dom0" "$out/guest"

# Copy an executable and every shared library it needs, keeping their paths.
copy_with_libs() {
    local root=$1; shift
    local f lib
    for f in "$@"; do
        install -D -m 0755 "$f" "$root$f"
        for lib in $(ldd "$f" | awk '/=> \//{print $3} /^\t\/lib/{print $1}'); do
            [ -e "$root$lib" ] || install -D -m 0755 "$(realpath "$lib")" "$root$lib"
        done
    done
}

# Only the shared libraries FILE needs (FILE itself is already in place).
copy_libs_of() {
    local root=$1 f=$2 lib
    for lib in $(ldd "$f" | awk '/=> \//{print $3} /^\t\/lib/{print $1}'); do
        [ -e "$root$lib" ] || install -D -m 0755 "$(realpath "$lib")" "$root$lib"
    done
}

base_tree() {
    local root=$1
    mkdir -p "$root"/{bin,sbin,proc,sys,dev,etc,tmp,run,var/log,var/lib,usr/bin,root}
    install -m 0755 /bin/busybox "$root/bin/busybox"
}

# ---- guest
base_tree "$out/guest"
install -m 0755 "$here/guest-init" "$out/guest/init"
(cd "$out/guest" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/guest.cpio.gz"

# ---- Dom0
root=$out/dom0
base_tree "$root"
install -m 0755 "$here/dom0-init" "$root/init"
mkdir -p "$root/modules"
for m in xen-evtchn xen-privcmd xenfs/xenfs xen-gntdev xen-gntalloc; do
    src=$(ls "$moddir/kernel/drivers/xen/$m".ko* | head -1)
    case $src in
        *.xz) xz -dc "$src" > "$root/modules/$(basename "$m").ko" ;;
        *) cp "$src" "$root/modules/$(basename "$m").ko" ;;
    esac
done

copy_with_libs "$root" $XENBIN/xenstored $XENBIN/xl $XENBIN/xen-init-dom0 $XENBIN/xenconsoled $XENBIN/libxl-save-helper \
    /usr/bin/xenstore
for t in read write ls list rm exists; do ln -sf xenstore "$root/usr/bin/xenstore-$t"; done
mkdir -p "$root/etc/xen" && : > "$root/etc/xen/xl.conf"   # xl warns when it is missing
# xl dlopen()s libgcc_s for pthread_cancel unwinding; ldd cannot see it.
libgcc=$(realpath /lib/x86_64-linux-gnu/libgcc_s.so.1)
install -D -m 0755 "$libgcc" "$root/lib/x86_64-linux-gnu/libgcc_s.so.1"

# The domctl test program, against the patched public header.
gcc -O2 -Wall -Werror -I"$tree/xen/include" -o "$out/sev-domctl" "$here/sev-domctl.c" -l:libxencall.so.1
copy_with_libs "$root" "$out/sev-domctl"
mv "$root$out/sev-domctl" "$root/usr/bin/sev-domctl"

# Python with cffi and cryptography (Debian's), and sevd itself: the daemon's real hypervisor backend
# (sevd/xen/domctl.py) runs against the patched Xen in the sev=test boot.
repo=$(cd "$here/../.." && pwd)
copy_with_libs "$root" /usr/bin/python3.11
ln -sf python3.11 "$root/usr/bin/python3"
cp -a /usr/lib/python3.11 "$root/usr/lib/"
rm -rf "$root/usr/lib/python3.11/"{test,idlelib,tkinter,turtledemo,ensurepip,lib2to3,pydoc_data,config-3.11-x86_64-linux-gnu}
mkdir -p "$root/usr/lib/python3/dist-packages"
cp -a /usr/lib/python3/dist-packages/{cffi,pycparser,ply,_cffi_backend.cpython-311-x86_64-linux-gnu.so,cryptography} \
    "$root/usr/lib/python3/dist-packages/"
for so in $(find "$root/usr/lib/python3.11/lib-dynload" "$root/usr/lib/python3/dist-packages" -name '*.so'); do
    copy_with_libs "$root" "${so#"$root"}"
done
mkdir -p "$root/opt/sevd"
(cd "$repo" && find sevd -name '*.py' | cpio -pdm --quiet "$root/opt/sevd")
cp "$here/domctl-smoke.py" "$root/opt/sevd/"

if [ -n "$venv" ]; then
    # Only what sevd needs at run time, from the venv `make venv` built (same Debian python3.11).
    # Each from where the venv's Python imports it: the venv, or Debian's dist-packages for what the
    # venv (made with --system-site-packages) did not need to install again.
    mkdir -p "$root/opt/site"
    for p in cffi _cffi_backend pycparser click cryptography ioctl_opt pyxs systemd; do
        where=$("$venv/bin/python" -c "import importlib.util as u; s = u.find_spec('$p'); \
print(s.submodule_search_locations[0] if s.submodule_search_locations else s.origin)")
        cp -a "$where" "$root/opt/site/"
    done
    find "$root/opt/site" -name __pycache__ -prune -exec rm -rf {} +
    for so in $(find "$root/opt/site" -name '*.so'); do
        copy_libs_of "$root" "$so"
    done
    rm -rf "$root/opt/sevd/sevd"
    (cd "$repo" && find sevd -name __pycache__ -prune -o -type f -print | cpio -pdm --quiet "$root/opt/sevd")
    # The simulated PSP (sevd-sim): sevd finds it as the `simulated` backend through its entry point,
    # so the package's metadata goes with it.
    (cd "$repo/sim" && find sevd_sim -name __pycache__ -prune -o -type f -print | cpio -pdm --quiet "$root/opt/sevd")
    meta="$root/opt/sevd/sevd_sim-0.dist-info"
    mkdir -p "$meta"
    printf 'Metadata-Version: 2.1\nName: sevd-sim\nVersion: 0\n' > "$meta/METADATA"
    printf '[sevd.backends]\nsimulated = sevd_sim.backends:backend\n' > "$meta/entry_points.txt"
    for cmd in sevd:sevd.cli.sevd_main xl-sev:sevd.cli.xl_sev sev-owner:sevd.cli.owner sevd-sim:sevd_sim.cli; do
        name=${cmd%%:*}
        cat > "$root/usr/bin/$name" <<WRAPPER
#!/bin/sh
exec python3 -c "import sys; from ${cmd#*:} import main; sys.argv[0] = '$name'; main()" "\$@"
WRAPPER
        chmod 0755 "$root/usr/bin/$name"
    done
    mkdir -p "$root/opt/sevd-system"
    cp -a "$here/system/." "$root/opt/sevd-system/"
fi

mkdir -p "$root/guest"
cp "$kernel" "$root/guest/vmlinuz"
cp "$out/guest.cpio.gz" "$root/guest/initrd.cpio.gz"
cp "$here/pvh.cfg" "$here/pvh-stub.cfg" /usr/lib/xen-4.17/boot/xen-shim "$root/guest/"

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/dom0.cpio.gz"
ls -la "$out/dom0.cpio.gz" "$out/guest.cpio.gz"
