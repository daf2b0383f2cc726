#!/bin/sh
# DKMS PRE_BUILD for sevd-ccp: lay out the ccp driver of the target kernel's series, with the sevd patch, in
# the DKMS build directory (the current directory).  The driver comes from Debian's linux-source-X.Y of the
# kernel's series, as xen-patches/linux/check.sh builds it; the patch must apply without fuzz.
#   prepare.sh KERNELVER        (e.g. 6.1.0-56-amd64)
set -eu
kver=$1
series=$(echo "$kver" | sed -n 's/^\([0-9]*\.[0-9]*\).*/\1/p')
tarball=/usr/src/linux-source-$series.tar.xz
if [ ! -f "$tarball" ]; then
    echo "sevd-ccp: $tarball is missing: apt install linux-source-$series (the ccp driver is taken from it)" >&2
    exit 1
fi
rm -rf src drivers include ./*.c ./*.h Makefile Kbuild
mkdir src
tar -xJf "$tarball" -C src --strip-components=1 --wildcards \
    "linux-source-$series/drivers/crypto/ccp/*" "linux-source-$series/include/linux/psp*.h" \
    "linux-source-$series/include/uapi/linux/psp-sev.h" "linux-source-$series/drivers/dma/dmaengine.h"
for p in patches/*.patch; do
    (cd src && patch -p1 --fuzz=0 --batch --quiet) < "$p" || {
        echo "sevd-ccp: $p does not apply to linux-source-$series (a kernel series this package was not made for)" >&2
        exit 1
    }
done
# The module builds in drivers/crypto/ccp; its sources include ../../dma/dmaengine.h.
mkdir -p drivers/crypto/ccp/include/linux drivers/crypto/ccp/include/uapi/linux drivers/dma
cp -a src/drivers/crypto/ccp/. drivers/crypto/ccp/
cp src/include/linux/psp*.h drivers/crypto/ccp/include/linux/
cp src/include/uapi/linux/psp-sev.h drivers/crypto/ccp/include/uapi/linux/
cp src/drivers/dma/dmaengine.h drivers/dma/
# The patched headers must win over the installed kernel's (ccflags-y comes too late on the command line).
printf 'NOSTDINC_FLAGS += -I$(src)/include -I$(src)/include/uapi\ninclude $(src)/Makefile\n' > drivers/crypto/ccp/Kbuild
