"""The stock Xen paths that would run an SEV cfg without SEV, each decided (docs/operations.md, "Stock Xen
paths"): a reboot destroys, autostart goes through sevd, xendomains must not save, save/restore/migrate are
refused.  Real-host paths with the fake `xl` of test_xl_sev (RealHost)."""

import json

import pytest
from daemon_harness import OVMF
from test_xl_sev import RealHost, guest_cfg, run

from sevd.toolstack import xendomains
from sevd.toolstack.autostart import cfg_files
from sevd.toolstack.xl import sev_overrides
from sevd.xen import protocol as proto
from sevd.xen import xlcfg

pytestmark = pytest.mark.skipif(not OVMF.exists(), reason="Debian's ovmf package provides the boot image")


# -- reboot: xl never rebuilds an SEV guest from its cfg ------------------------------------------------------------


@pytest.mark.parametrize(
    "lines,expect",
    [
        ("", ['on_reboot="destroy"', 'on_soft_reset="destroy"']),
        ('on_reboot = "restart"\n', ['on_reboot="destroy"', 'on_soft_reset="destroy"']),
        ('on_crash = "coredump-restart"\n', ['on_reboot="destroy"', 'on_crash="coredump-destroy"',
                                               'on_soft_reset="destroy"']),
        ('on_poweroff = "rename-restart"\non_watchdog = "restart"\n',
         ['on_poweroff="destroy"', 'on_reboot="destroy"', 'on_watchdog="destroy"', 'on_soft_reset="destroy"']),
        ('on_reboot = "preserve"\non_soft_reset = "destroy"\n', []),
    ],
    ids=["defaults", "restart", "coredump-restart", "rename-restart", "nothing-restarts"],
)  # fmt: skip
def test_every_restart_action_of_an_sev_guest_becomes_destroy(tmp_path, lines, expect):
    guest = xlcfg.load(guest_cfg(tmp_path, "g", lines))
    assert sev_overrides(guest) == expect


def test_a_plain_guest_keeps_its_actions(tmp_path):
    guest = xlcfg.load(guest_cfg(tmp_path, "p", 'on_reboot = "restart"\n', base="plain-guest.cfg"))
    assert sev_overrides(guest) == []


def test_real_host_creates_with_the_overrides_after_the_cfg(tmp_path):
    host = RealHost(tmp_path)
    daemon = host.start_daemon()
    cfg = guest_cfg(tmp_path, "realguest", 'on_reboot = "restart"\n')
    try:
        proc = host.xl_sev("create", cfg)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        daemon.join(5)
        # xl appends the key=value words to the file's text: the last assignment wins
        assert host.xl_calls()[0] == f'create -p {cfg} on_reboot="destroy" on_soft_reset="destroy"'
    finally:
        host.close()


# -- autostart: /etc/sevd/auto through sevd ----------------------------------------------------------------------


def test_autostart_creates_each_cfg_through_sevd_and_leaves_running_ones(tmp_path):
    host = RealHost(tmp_path)
    auto = tmp_path / "auto"
    auto.mkdir()
    guest_cfg(auto, "realguest")
    (auto / "realguest.cfg~").write_text("an editor's backup")
    (auto / "broken.cfg").write_text('name = "broken"\nmemory = = 1\n')
    assert [p.name for p in cfg_files(auto)] == ["broken.cfg", "realguest.cfg"]
    daemon = host.start_daemon()
    try:
        proc = host.xl_sev("--json", "autostart", "--dir", auto)
        assert proc.returncode == 1, proc.stdout + proc.stderr  # one cfg failed; the other started all the same
        daemon.join(5)
        results = {r["name"] or r["cfg"]: r for r in json.loads(proc.stdout)}
        assert results["realguest"]["status"] == "started"
        assert results[str(auto / "broken.cfg")]["status"] == "failed"
        assert "config parsing error" in results[str(auto / "broken.cfg")]["detail"]
        assert host.seen["generation"] == "1" and host.xl_calls()[0].startswith("create -p ")
        # a second run: the guest is there, nothing is created
        (auto / "broken.cfg").unlink()
        host.xs.write("/local/domain/7/name", "realguest")
        calls = len(host.xl_calls())
        proc = host.xl_sev("autostart", "--dir", auto)
        assert proc.returncode == 0 and "already running, left alone" in proc.stdout, proc.stdout + proc.stderr
        assert len(host.xl_calls()) == calls
    finally:
        host.close()


def test_autostart_of_an_empty_or_missing_directory_does_nothing(tmp_path):
    host = RealHost(tmp_path)
    try:
        proc = host.xl_sev("autostart", "--dir", tmp_path / "none")
        assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr
        assert not host.log.exists()
    finally:
        host.close()


# -- xendomains: what `xl-sev ok` says of /etc/xen/auto and /etc/default/xendomains -------------------------------

DEBIAN_DEFAULTS = """\
## Type: string
XENDOMAINS_MIGRATE=""
XENDOMAINS_SAVE=/var/lib/xen/save
XENDOMAINS_RESTORE=true
XENDOMAINS_AUTO={auto}
XENDOMAINS_STOP_MAXWAIT=300
"""


def etc(tmp_path, save="/var/lib/xen/save", sev_in_auto=True):
    root = tmp_path / "etc"
    auto = root / "xen" / "auto"
    auto.mkdir(parents=True)
    (root / "default").mkdir()
    text = DEBIAN_DEFAULTS.format(auto=auto).replace("XENDOMAINS_SAVE=/var/lib/xen/save", f"XENDOMAINS_SAVE={save}")
    (root / "default" / "xendomains").write_text(text)
    guest_cfg(auto, "plain", base="plain-guest.cfg")
    if sev_in_auto:
        guest_cfg(auto, "secret")
    return root


def test_debian_defaults_warn_of_both_autostart_and_save(tmp_path):
    root = etc(tmp_path)
    autostart, save = xendomains.checks(root / "default" / "xendomains", root / "xen" / "auto")
    assert (autostart.verdict, save.verdict) == ("WARN", "WARN")
    assert "(secret.cfg)" in autostart.detail and "WITHOUT SEV" in autostart.detail
    assert "plain.cfg" not in autostart.detail and "/etc/sevd/auto" in autostart.hint
    assert "XENDOMAINS_SAVE=/var/lib/xen/save" in save.detail and "XENDOMAINS_SAVE=" in save.hint


def test_a_host_set_up_for_sev_passes(tmp_path):
    root = etc(tmp_path, save='""  # SEV guests: never saved', sev_in_auto=False)
    checks = xendomains.checks(root / "default" / "xendomains", root / "xen" / "auto")
    assert all(c.ok for c in checks), checks


def test_no_xendomains_is_one_passing_line(tmp_path):
    (check,) = xendomains.checks(tmp_path / "xendomains", tmp_path / "auto")
    assert check.ok and "missing" in check.detail


def test_ok_on_a_xen_host_shows_the_xendomains_lines(tmp_path):
    host = RealHost(tmp_path)
    root = etc(tmp_path)
    try:
        proc = run("xl-sev", "--config", host.config, "ok", env=host.env | {"XL_SEV_ETC": str(root)})
        out = proc.stdout
        assert "[ WARN ] xendomains autostart:" in out and "[ WARN ] xendomains save:" in out, out
        assert out.count("hint: set XENDOMAINS_SAVE=") == 1
    finally:
        host.close()


# -- save, restore, migrate: refused with the reason ---------------------------------------------------------------


@pytest.mark.parametrize("verb", ["save", "restore", "migrate"])
def test_save_restore_migrate_are_refused_with_the_reason(tmp_path, verb):
    host = RealHost(tmp_path)
    try:
        proc = host.xl_sev(verb, "realguest", "/var/lib/xen/save/realguest", "-p")
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
        assert f"error: {verb}: refused: an SEV guest cannot be saved, restored or migrated" in proc.stderr
        assert "xl-sev create" in proc.stderr and not host.log.exists()  # xl was never run
        proc = host.xl_sev(verb, "realguest", "--json")
        assert json.loads(proc.stdout)["error"] == "input" and proc.returncode == 2
    finally:
        host.close()


def test_stale_request_nodes_are_not_what_autostart_reads(tmp_path):
    """Autostart asks xl's name nodes, not sevd's: a guest sevd still lists but Xen lost is created again."""
    host = RealHost(tmp_path)
    auto = tmp_path / "auto"
    auto.mkdir()
    guest_cfg(auto, "realguest")
    host.xs.write(proto.guest_path(9, "request"), "stale")
    daemon = host.start_daemon()
    try:
        proc = host.xl_sev("autostart", "--dir", auto)
        assert proc.returncode == 0 and "realguest started" in proc.stdout, proc.stdout + proc.stderr
        daemon.join(5)
    finally:
        host.close()
