"""`xl-sev platform snp-status|snp-commit|snp-config|vlek-load`: click code over sevd.toolstack.snp_platform."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from sevd.cli.common import emit, reports_errors
from sevd.config import Config
from sevd.toolstack import snp_platform


def register(platform: click.Group, config_of: Callable[[click.Context], Config]) -> None:
    """Add the SNP verbs to the `platform` group (they take --json like every verb there)."""

    def show(ctx: click.Context, st: snp_platform.SnpPlatformStatus) -> None:
        emit(ctx, st.as_dict(), snp_platform.status_text(st))

    @platform.command("snp-status")
    @click.pass_context
    @reports_errors
    def snp_status(ctx: click.Context) -> None:
        """SNP_PLATFORM_STATUS: SNP API, state, RMP, guests, current and reported TCB, masks, VLEK."""
        show(ctx, snp_platform.status(config_of(ctx)))

    @platform.command("snp-commit")
    @click.pass_context
    @reports_errors
    def snp_commit(ctx: click.Context) -> None:
        """SNP_COMMIT: make the running SNP firmware and TCB the minimum (no rollback below them)."""
        show(ctx, snp_platform.commit(config_of(ctx)))

    @platform.command("snp-config")
    @click.option("--reported-tcb", help="TCB_VERSION the reports carry, 16 hex digits (default: as now).")
    @click.option("--mask-chip-id/--no-mask-chip-id", default=None, help="Zero CHIP_ID in reports (default: as now).")
    @click.option("--mask-chip-key/--no-mask-chip-key", default=None, help="Unsigned reports (default: as now).")
    @click.pass_context
    @reports_errors
    def snp_config(
        ctx: click.Context, reported_tcb: str | None, mask_chip_id: bool | None, mask_chip_key: bool | None
    ) -> None:
        """SNP_SET_CONFIG: the reported TCB and the chip id/key masks."""
        tcb = None if reported_tcb is None else snp_platform.parse_tcb(reported_tcb)
        show(
            ctx,
            snp_platform.configure(
                config_of(ctx), reported_tcb=tcb, mask_chip_id=mask_chip_id, mask_chip_key=mask_chip_key
            ),
        )

    @platform.command("vlek-load")
    @click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
    @click.pass_context
    @reports_errors
    def vlek_load(ctx: click.Context, file: Path) -> None:
        """SNP_VLEK_LOAD: a wrapped VLEK hashstick (432 bytes) for this chip."""
        show(ctx, snp_platform.vlek_load(config_of(ctx), file))
