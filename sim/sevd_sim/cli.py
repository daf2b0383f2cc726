"""`sevd-sim`: a simulated host for CI and the demo (simulated PSP, simulated Xen, xenstored stand-in).

Nothing here belongs on a real host: it stands in for the EPYC, Xen and xenstored that sevd drives.
"""

from __future__ import annotations

import click

from sevd import __version__
from sevd_sim.psp.linux import DEFAULT_LINUX, GENERATIONS

# Which Dom0 kernel's /dev/sev driver a simulated PSP sits behind (sevd_sim.psp.linux), for `host` and `psp`.
LINUX_OPTION = click.option(
    "--linux",
    type=click.Choice(list(GENERATIONS)),
    default=DEFAULT_LINUX,
    show_default=True,
    help="The Dom0 kernel's /dev/sev driver to simulate: 6.1 (Debian 12) INITs the PSP at probe; 6.12 "
    "(Debian 13) and 6.16 leave it UNINIT and INIT/SHUTDOWN around each platform ioctl.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sevd-sim")
def cli() -> None:
    """sevd-sim: simulated SEV hosts for sevd, xl-sev and sev-owner (tests and the demo)."""


@cli.command()
@click.option("--host", "host_dir", type=click.Path(file_okay=False), default=None, help="Simulated host directory.")
def demo(host_dir: str | None) -> None:
    """Run the demo SEV launch on a simulated host (simulated PSP, simulated Xen)."""
    from sevd_sim.demo import run_demo

    raise SystemExit(run_demo(host_dir))


@cli.command("host")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--cpu",
    type=click.Choice(["naples", "rome", "milan", "genoa", "turin"]),
    default=None,
    help="EPYC generation: sets the ASID counts, SEV-ES and SME_COHERENT (default: a small coherent CPU, "
    "64 ASIDs, SEV-ES 1..4).",
)
@click.option("--max-asid", type=int, default=None, help="Simulated CPUID 0x8000001F: number of ASIDs.")
@click.option("--min-sev-asid", type=int, default=None, help="First plain-SEV ASID (below: SEV-ES).")
@LINUX_OPTION
@click.option("--create-only", is_flag=True, help="Create the host and exit; do not run the xenstored stand-in.")
@click.option("--snp", is_flag=True, help="The BIOS enables SEV-SNP (Milan or later; docs/snp.md).")
def host(
    directory: str,
    cpu: str | None,
    max_asid: int | None,
    min_sev_asid: int | None,
    linux: str,
    create_only: bool,
    snp: bool,
) -> None:
    """Create a simulated host in DIRECTORY if missing, then run its xenstored stand-in in the foreground."""
    from pathlib import Path

    from sevd_sim import xenstored
    from sevd_sim.host import SimulatedHost

    host = SimulatedHost.create(
        Path(directory), cpu=cpu, max_asid=max_asid, min_sev_asid=min_sev_asid, linux=linux, snp=snp
    )
    linux = host.psp().driver.version  # an existing host keeps the driver it was made with
    click.echo(f"simulated host ready: {host.root} (config {host.root / 'sevd.toml'}, Linux {linux})")
    if create_only:
        return
    sock, store = host.root / "xenstored.sock", host.root / "xenstored.json"
    raise SystemExit(xenstored.main(["--socket", str(sock), "--store", str(store), "--init-dom0"]))


def _check_asids(max_asid: int, min_sev_asid: int) -> None:
    if not 1 <= min_sev_asid <= max_asid:
        click.echo(f"error: ASIDs need 1 <= --min-sev-asid ({min_sev_asid}) <= --max-asid ({max_asid})", err=True)
        raise SystemExit(2)


@cli.command("psp")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--xen-machine-memory",
    is_flag=True,
    help="Measure-only TEST MODE in Dom0 of the patched Xen booted with sev=test: guest memory is read "
    "through Xen and NOT encrypted.",
)
@click.option("--max-asid", type=int, default=None, help="Number of ASIDs (default 64, or what Xen reports).")
@click.option("--min-sev-asid", type=int, default=None, help="First plain-SEV ASID (default 5, or what Xen reports).")
@LINUX_OPTION
def psp(directory: str, xen_machine_memory: bool, max_asid: int | None, min_sev_asid: int | None, linux: str) -> None:
    """Create only a simulated PSP in DIRECTORY (no simulated Xen, no xenstored stand-in)."""
    from pathlib import Path

    from sevd.xen.hypervisor import HypervisorError
    from sevd_sim import kds
    from sevd_sim.host import DEFAULT_MEMORY
    from sevd_sim.psp.device import DEFAULT_MAX_ASID, DEFAULT_MIN_SEV_ASID, XEN_MACHINE_MEMORY, create_psp
    from sevd_sim.psp.memory import PhysicalMemory

    root = Path(directory)
    if (root / "psp" / "state.json").exists():
        click.echo(
            f"error: {root / 'psp'} already holds a simulated PSP; remove it or choose another directory", err=True
        )
        raise SystemExit(2)
    if xen_machine_memory:
        from sevd.xen.domctl import DomctlXen

        try:
            xen = DomctlXen()
            try:
                info = xen.info()
            finally:
                xen.close()
        except HypervisorError as exc:
            click.echo(
                f"error: --xen-machine-memory needs Dom0 of the patched Xen booted with sev=test: {exc}", err=True
            )
            raise SystemExit(1) from None
        if not info.test_mode:
            click.echo(
                "error: --xen-machine-memory needs Xen booted with sev=test (this Xen does not read guest memory "
                "for a simulated PSP)",
                err=True,
            )
            raise SystemExit(1)
        max_asid = info.max_asid if max_asid is None else max_asid
        min_sev_asid = info.min_sev_asid if min_sev_asid is None else min_sev_asid
        _check_asids(max_asid, min_sev_asid)
        root.mkdir(parents=True, exist_ok=True)
        create_psp(
            root,
            max_asid=max_asid,
            min_sev_asid=min_sev_asid,
            memory=XEN_MACHINE_MEMORY,
            es=info.es,
            encrypt=False,
            linux=linux,
        )
        memory = "Xen machine memory (measure-only TEST MODE: guest memory is NOT encrypted)"
    else:
        max_asid = DEFAULT_MAX_ASID if max_asid is None else max_asid
        min_sev_asid = DEFAULT_MIN_SEV_ASID if min_sev_asid is None else min_sev_asid
        _check_asids(max_asid, min_sev_asid)
        root.mkdir(parents=True, exist_ok=True)
        image = root / "memory.img"
        if not image.exists():
            PhysicalMemory.create(image, DEFAULT_MEMORY).close()
        create_psp(root, max_asid=max_asid, min_sev_asid=min_sev_asid, es=True, linux=linux)
        memory = f"{image} (simulated, encrypted)"
    click.echo(f"simulated PSP ready: {root / 'psp'}")
    click.echo(f"  memory: {memory}")
    click.echo(f"  Linux driver: {linux}")
    click.echo(f"  ASIDs: 1..{max_asid} (SEV-ES 1..{min_sev_asid - 1}, SEV {min_sev_asid}..{max_asid})")
    click.echo(f'  sevd.toml: [psp] backend = "simulated", path = "{root.resolve()}"')
    click.echo(f'             [keyserver] url = "{kds.kds_url(root)}", generation = "{kds.GENERATION}"')
    click.echo(f'             [owner] roots = "{kds.roots_dir(root).resolve()}"')


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
