#!/usr/bin/env bash
# `make deb-check`: the sevd package in fresh Debian 12 and Debian 13 roots made from Debian's archive
# (mmdebstrap, variant apt plus systemd; cached as .cache/deb-check/<suite>.tar, unpacked afresh each run).
# In each: `apt install ./sevd_*.deb` pulls what it needs; the commands answer; `xl-sev ok`, `xl-sev list`
# and `sevd run` fail with one clear line and their documented status on a host with no Xen and no /dev/sev;
# the unit passes `systemd-analyze verify` at its installed path and is enabled; an upgrade keeps
# /var/lib/sevd; a purge removes what the package made.
#   install-check.sh [DEBDIR] [SUITE...]       (default dist/deb, bookworm trixie)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
DEBS=$(realpath "${1:-$repo/dist/deb}")
shift || true
SUITES=("${@:-bookworm trixie}")
[ $# -gt 0 ] && SUITES=("$@") || SUITES=(bookworm trixie)
CACHE=$repo/.cache/deb-check
MIRROR=${SEVD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
T0=$(date +%s)
FAILS=0

ls "$DEBS"/sevd_*.deb >/dev/null 2>&1 || { echo "install-check: no sevd_*.deb in $DEBS (make deb first)" >&2; exit 1; }
command -v mmdebstrap >/dev/null || { $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null; }
mkdir -p "$CACHE"

# The upgrade: the same package with a higher version (its maintainer scripts run as in a real upgrade).
deb=$(ls "$DEBS"/sevd_*.deb | sort -V | tail -1)
up=$CACHE/upgrade
rm -rf "$up" && mkdir -p "$up/x"
dpkg-deb -R "$deb" "$up/x"
version=$(sed -n 's/^Version: //p' "$up/x/DEBIAN/control")
sed -i "s/^Version: .*/Version: ${version}+check1/" "$up/x/DEBIAN/control"
dpkg-deb -b "$up/x" "$up/sevd_${version}+check1_upgrade.deb" >/dev/null

ok() { echo "  ok   $*"; }
bad() { echo "  FAIL $*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

for suite in "${SUITES[@]}"; do
    echo "== $suite"
    t=$(date +%s)
    [ -d "$CACHE/$suite.tar" ] && $SUDO rm -rf "$CACHE/$suite.tar"  # left by an older run: a root, not a tarball
    if [ ! -s "$CACHE/$suite.tar" ]; then
        # --format=tar: mmdebstrap otherwise guesses the format from the name's extension.
        mmdebstrap --quiet --format=tar --variant=apt --include=systemd,ca-certificates "$suite" \
            "$CACHE/$suite.partial.tar" "$MIRROR"
        mv "$CACHE/$suite.partial.tar" "$CACHE/$suite.tar"
    fi
    root=$CACHE/root-$suite
    $SUDO rm -rf "$root" && mkdir -p "$root"
    $SUDO tar -xf "$CACHE/$suite.tar" -C "$root"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mkdir -p "$root/tmp/debs" && cp "$deb" "$up"/*.deb "$root/tmp/debs/"
    $SUDO mount -t proc proc "$root/proc"
    trap '$SUDO umount "$root/proc" 2>/dev/null || true' EXIT
    in_root() { $SUDO chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
    sh_root() { in_root sh -c "$1"; }

    echo "  $(sed -n 's/^PRETTY_NAME=//p' "$root/etc/os-release")"
    in_root apt-get update -qq
    if in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "/tmp/debs/$(basename "$deb")" > "$CACHE/apt-$suite.log" 2>&1; then
        ok "apt install ./$(basename "$deb") ($(grep -c '^Setting up' "$CACHE/apt-$suite.log") packages set up)"
    else
        bad "apt install: $(tail -5 "$CACHE/apt-$suite.log")"; $SUDO umount "$root/proc"; continue
    fi

    check "sevd --version: $(in_root sevd --version 2>&1)" in_root sevd --version
    check "xl-sev --help" sh_root 'xl-sev --help >/dev/null'
    check "sev-owner --help" sh_root 'sev-owner --help >/dev/null'
    check "man pages for sevd, xl-sev, sev-owner" sh_root 'for c in sevd xl-sev sev-owner; do test -s /usr/share/man/man1/$c.1.gz || exit 1; done'
    check "bash completions" sh_root 'for c in sevd xl-sev sev-owner; do grep -q complete /usr/share/bash-completion/completions/$c || exit 1; done'
    check "pyxs and ioctl-opt bundled, not on the system path" \
        sh_root 'test -f /usr/lib/sevd/vendor/pyxs/__init__.py && ! python3 -c "import pyxs" 2>/dev/null'
    check "no sevd_sim installed" sh_root '! find /usr -name "sevd_sim*" | grep -q .'

    # A host with no Xen and no /dev/sev.
    sh_root 'xl-sev ok >/tmp/ok.out 2>/tmp/ok.err; echo $? >/tmp/ok.rc' || true
    echo "  | xl-sev ok (exit $(cat "$root/tmp/ok.rc")):"; sed -n '/^\[/p' "$root/tmp/ok.out" | sed 's/^/  |   /'
    check "xl-sev ok exits 1, names /dev/sev and Xen, no traceback" sh_root \
        'test "$(cat /tmp/ok.rc)" = 1 && grep -q "/dev/sev" /tmp/ok.out && grep -q "^\[ FAIL \] Xen" /tmp/ok.out && ! grep -q Traceback /tmp/ok.out /tmp/ok.err'
    sh_root 'xl-sev list >/tmp/list.out 2>/tmp/list.err; echo $? >/tmp/list.rc' || true
    echo "  | xl-sev list (exit $(cat "$root/tmp/list.rc")): $(cat "$root/tmp/list.err")"
    check "xl-sev list with no xenstore: one line, non-zero" sh_root \
        'test "$(cat /tmp/list.rc)" != 0 && test "$(wc -l </tmp/list.err)" = 1 && ! grep -q Traceback /tmp/list.err'
    sh_root 'sevd run >/tmp/run.out 2>&1; echo $? >/tmp/run.rc' || true
    echo "  | sevd run (exit $(cat "$root/tmp/run.rc")): $(cat "$root/tmp/run.out")"
    check "sevd run with no /dev/sev: one line, exit 69 (RestartPreventExitStatus)" sh_root \
        'test "$(cat /tmp/run.rc)" = 69 && test "$(wc -l </tmp/run.out)" = 1'
    sh_root 'printf "[daemon]\nlog_levle = \"debug\"\n" > /tmp/bad.toml; sevd run --config /tmp/bad.toml >/tmp/bad.out 2>&1; echo $? >/tmp/bad.rc' || true
    echo "  | sevd run, bad config (exit $(cat "$root/tmp/bad.rc")): $(cat "$root/tmp/bad.out")"
    check "an unknown key is refused, naming it and the file, exit 78" sh_root \
        'test "$(cat /tmp/bad.rc)" = 78 && grep -q "log_levle" /tmp/bad.out && grep -q /tmp/bad.toml /tmp/bad.out'

    # The unit, at its installed path.
    unit=$(sh_root 'ls /lib/systemd/system/sevd.service /usr/lib/systemd/system/sevd.service 2>/dev/null | head -1')
    sh_root "systemd-analyze verify $unit >/tmp/verify.out 2>/tmp/verify.err; echo \$? >/tmp/verify.rc" || true
    check "systemd-analyze verify $unit: exit 0, nothing on stderr" sh_root \
        'test "$(cat /tmp/verify.rc)" = 0 && ! test -s /tmp/verify.err' || sed 's/^/  |   /' "$root/tmp/verify.err"
    check "sevd.service enabled" sh_root 'test "$(systemctl is-enabled sevd.service)" = enabled'
    check "sevd-autostart.service enabled, /etc/sevd/auto present" sh_root \
        'test "$(systemctl is-enabled sevd-autostart.service)" = enabled && test -d /etc/sevd/auto'
    check "/etc/sevd/sevd.toml is a conffile, all comments" sh_root \
        'dpkg-query -W -f="\${Conffiles}" sevd | grep -q /etc/sevd/sevd.toml && ! grep -qv "^\(#.*\|\[.*\]\|\)$" /etc/sevd/sevd.toml'
    check "/var/lib/sevd, /var/cache/sevd, /run/sevd are 0700" sh_root \
        'for d in /var/lib/sevd /var/cache/sevd /run/sevd; do test "$(stat -c %a $d)" = 700 || exit 1; done'

    # Upgrade keeps the state; purge removes what the package made.
    sh_root 'echo kept > /var/lib/sevd/check-marker; echo cached > /var/cache/sevd/check-marker'
    if in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "/tmp/debs/sevd_${version}+check1_upgrade.deb" > "$CACHE/upgrade-$suite.log" 2>&1; then
        check "upgrade to ${version}+check1 keeps /var/lib/sevd" sh_root \
            "test \"\$(dpkg-query -W -f='\${Version}' sevd)\" = '${version}+check1' && grep -q kept /var/lib/sevd/check-marker"
    else
        bad "upgrade: $(tail -3 "$CACHE/upgrade-$suite.log")"
    fi
    in_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq sevd > "$CACHE/purge-$suite.log" 2>&1 || bad "purge failed"
    check "purge removes /etc/sevd, /var/lib/sevd, /var/cache/sevd, /run/sevd, /usr/lib/sevd and the enablement" sh_root \
        '! test -e /etc/sevd && ! test -e /var/lib/sevd && ! test -e /var/cache/sevd && ! test -e /run/sevd && ! test -e /usr/lib/sevd && ! test -e /etc/systemd/system/multi-user.target.wants/sevd.service && ! dpkg-query -W sevd 2>/dev/null'
    $SUDO umount "$root/proc"
    trap - EXIT
    echo "== $suite: $(( $(date +%s) - t )) s"
done

echo
if [ "$FAILS" = 0 ]; then
    echo "install-check: PASS (${SUITES[*]}, $(( $(date +%s) - T0 )) s)"
else
    echo "install-check: FAIL ($FAILS checks)"; exit 1
fi
