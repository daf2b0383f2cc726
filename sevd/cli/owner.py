"""sev-owner: the guest owner's tool.  Reads and writes the files sev-tool and sevctl use.

Exit status: 0 success, 1 verification failure (a signature, MAC or measurement did not verify), 2 unusable
input (a missing or malformed file or argument).  `--json` on every verb prints one JSON object instead of text.
"""

from __future__ import annotations

import base64
import pathlib
from collections.abc import Callable
from typing import Any

import click

from sevd import __version__
from sevd.abi import certs
from sevd.abi.launch import LaunchMeasurement
from sevd.abi.policy import Policy
from sevd.cli.common import run_cli
from sevd.cli.owner_snp import snp_group
from sevd.cli.owner_verbs import _Result, _verb
from sevd.errors import InputError, VerificationError
from sevd.owner import files, keyserver
from sevd.owner import measurement as owner_measurement
from sevd.owner import secret as owner_secret
from sevd.owner.chain import verify_chain_dir
from sevd.owner.session import make_session, write_session


def parse_policy(text: str) -> int:
    """The guest policy word (sevd.abi.policy: a number or flag names; reserved bits refused)."""
    try:
        return int(Policy.parse(text))
    except InputError as exc:
        raise InputError(f"--policy: {exc}") from None


def parse_api(text: str) -> tuple[int, int]:
    major, sep, minor = text.partition(".")
    try:
        values = int(major), int(minor)
    except ValueError:
        values = (-1, -1)
    if not sep or not all(0 <= v <= 255 for v in values):
        raise InputError(f"--api {text!r}: expected MAJOR.MINOR, e.g. 0.22")
    return values


def parse_byte(text: str, option: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        raise InputError(f"{option} {text!r}: expected a number from 0 to 255")
    return value


def parse_mnonce(text: str) -> bytes:
    try:
        data = bytes.fromhex(text)
    except ValueError:
        data = b""
    if len(data) != 16:
        raise InputError(f"--mnonce {text!r}: expected 32 hex digits (16 bytes)")
    return data


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sev-owner")
def main() -> None:
    """Guest-owner tools for AMD SEV: verify a platform, make a launch session, check a measurement,
    package a secret."""


# -- verify-chain -----------------------------------------------------------------------------------------------


@main.command("verify-chain")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--roots", type=click.Path(file_okay=False), help="Trust the ark.cert + ask.cert in this directory, not AMD's."
)
@click.option("--ark", type=click.Path(dir_okay=False), help="Trust this root key instead of AMD's (with --ask).")
@click.option("--ask", type=click.Path(dir_okay=False), help="Trust this signing key instead of AMD's (with --ark).")
@_verb
def verify_chain_cmd(directory: str, roots: str | None, ark: str | None, ask: str | None) -> _Result:
    """Verify PDH <- PEK <- (OCA, CEK <- ASK <- ARK) from DIR (pdh.cert pek.cert oca.cert cek.cert).

    Only AMD's bundled roots are trusted; root files in DIR must be AMD's. Other roots only when named."""
    report = verify_chain_dir(directory, roots, ark=ark, ask=ask)
    lines = [f"chain OK: PDH <- PEK <- (OCA, CEK <- ASK <- ARK), roots: {report.describe_roots()}"]
    return _Result(
        lines + ([report.warning] if report.warning else []),
        roots=report.roots,
        generation=report.generation,
        amd_roots=report.amd,
        **({"warning": report.warning} if report.warning else {}),
    )


@main.command("fetch-cek")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--chip-id", required=True, help="The platform's chip id (xl-sev platform get-id), hex.")
@click.option("--kds-url", default=keyserver.AMD_KDS_URL, show_default=True, help="Key server base URL.")
@click.option("--generation", help="Which ask_ark file to fetch (default: the AMD generation that signed the CEK).")
@click.option("--cache", type=click.Path(file_okay=False), help="Cache directory (default $SEVD_CACHE_DIR/kds).")
@_verb
def fetch_cek_cmd(directory: str, chip_id: str, kds_url: str, generation: str | None, cache: str | None) -> _Result:
    """Replace DIR/cek.cert (the firmware's, unsigned) by the CEK AMD signed, from the key server by chip id, and
    add ask.cert and ark.cert. Verify with verify-chain afterwards: nothing fetched is trusted."""
    try:
        chip = bytes.fromhex(chip_id)
    except ValueError:
        raise InputError(f"--chip-id {chip_id[:16]!r}...: not hex") from None
    cache_dir = pathlib.Path(cache) if cache else keyserver.default_cache_dir()
    server = keyserver.KeyServer(url=kds_url, cache_dir=cache_dir, generation=generation)
    done = keyserver.complete_chain_dir(directory, chip, server)
    return _Result(
        [f"CEK of chip {done.chip_id[:16]}... from {done.cek_url}", f"ASK+ARK from {done.ask_ark_url}"]
        + [f"wrote {p}" for p in done.paths],
        files=[str(p) for p in done.paths],
        generation=done.generation,
    )


# -- session ----------------------------------------------------------------------------------------------------


@main.command("session")
@click.option("--pdh", "pdh_path", required=True, type=click.Path(dir_okay=False), help="The platform's pdh.cert.")
@click.option("--policy", required=True, help="Guest policy, e.g. 0x1 or NODBG|NOKS.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to write to.")
@click.option("--chain-dir", type=click.Path(file_okay=False), help="Certificates to verify the PDH with.")
@click.option("--roots", type=click.Path(file_okay=False), help="Trust these roots, not AMD's (see verify-chain).")
@click.option("--no-verify", is_flag=True, help="Do not verify the PDH's chain (testing only).")
@click.option("--name", default="guest", show_default=True, help="Prefix of the sevctl-style files.")
@_verb
def session_cmd(
    pdh_path: str, policy: str, out_dir: str, chain_dir: str | None, roots: str | None, no_verify: bool, name: str
) -> _Result:
    """Make a launch session: godh.cert, launch_blob.bin, tmp_tk.bin and NAME_{godh,session}.b64,
    NAME_{tek,tik}.bin."""
    policy_value = parse_policy(policy)
    warning: list[str] = []
    if no_verify:
        if chain_dir is not None or roots is not None:
            raise InputError("give --chain-dir/--roots or --no-verify, not both")
        pdh = certs.SevCert.parse(files.read_bytes(pdh_path, "PDH certificate"), pdh_path)
        verified = "not verified (--no-verify)"
    else:
        directory = pathlib.Path(chain_dir) if chain_dir else pathlib.Path(pdh_path).resolve().parent
        report = verify_chain_dir(directory, roots)
        pdh = certs.SevCert.parse(files.read_bytes(pdh_path, "PDH certificate"), pdh_path)
        if pdh != report.chain.pdh:
            raise VerificationError(f"{pdh_path} is not the PDH of the chain verified in {directory}")
        verified = f"chain verified in {directory} (roots: {report.describe_roots()})"
        warning = [report.warning] if report.warning else []
    if pdh.usage != certs.Usage.PDH:
        raise InputError(f"{pdh_path}: holds a {pdh.role} key, expected PDH")
    session = make_session(pdh, policy_value)
    written = write_session(out_dir, session, name)
    return _Result(
        [f"PDH {verified}", *warning, f"policy 0x{policy_value:08x}", *(f"wrote {p}" for p in written)],
        policy=policy_value,
        verified=not no_verify,
        files=[str(p) for p in written],
    )


# -- measurement ------------------------------------------------------------------------------------------------


def _measure_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(
        [
            click.option("--image", type=click.Path(dir_okay=False), help="The boot image (firmware, e.g. OVMF)."),
            click.option(
                "--kernel",
                type=click.Path(dir_okay=False),
                help="Instead of --image: a PVH guest's kernel (direct boot).",
            ),
            click.option("--ramdisk", type=click.Path(dir_okay=False), help="With --kernel: the PVH guest's ramdisk."),
            click.option("--policy", required=True, help="Guest policy."),
            click.option("--api", required=True, help="Firmware API version MAJOR.MINOR, e.g. 0.22."),
            click.option("--build", required=True, help="Firmware build number."),
            click.option("--tik", type=click.Path(dir_okay=False), help="TIK file (16 bytes, sevctl)."),
            click.option("--tk", type=click.Path(dir_okay=False), help="tmp_tk.bin (TEK||TIK, sev-tool)."),
            click.option("--vmsa", multiple=True, type=click.Path(dir_okay=False), help="SEV-ES VMSA page(s)."),
        ]
    ):
        fn = opt(fn)
    return fn


def _boot_image(image: str | None, kernel: str | None, ramdisk: str | None) -> bytes:
    """The measured bytes: a firmware file as it is, or a PVH kernel and ramdisk as Xen's toolstack loads them."""
    if (image is None) == (kernel is None):
        raise InputError("give either --image FILE (firmware) or --kernel FILE [--ramdisk FILE] (PVH direct boot)")
    if image is not None:
        if ramdisk is not None:
            raise InputError("--ramdisk goes with --kernel, not with --image")
        return files.read_bytes(image, "boot image")
    from sevd.owner.pvh import load_pvh_image

    assert kernel is not None
    initrd = files.read_bytes(ramdisk, "ramdisk") if ramdisk else None
    return load_pvh_image(
        files.read_bytes(kernel, "kernel"), initrd, kernel_name=kernel, ramdisk_name=str(ramdisk)
    ).data


def _measure_inputs(
    image: str | None, kernel: str | None, ramdisk: str | None, policy: str, api: str, build: str, vmsa: tuple[str, ...]
) -> dict[str, Any]:
    major, minor = parse_api(api)
    return {
        "image": _boot_image(image, kernel, ramdisk),
        "policy": parse_policy(policy),
        "api_major": major,
        "api_minor": minor,
        "build": parse_byte(build, "--build"),
        "vmsas": [files.read_bytes(v, "VMSA page") for v in vmsa],
    }


@main.command("measurement")
@_measure_options
@click.option("--mnonce", required=True, help="The launch's mnonce, 32 hex digits.")
@_verb
def measurement_cmd(
    image: str | None,
    kernel: str | None,
    ramdisk: str | None,
    policy: str,
    api: str,
    build: str,
    tik: str | None,
    tk: str | None,
    vmsa: tuple[str, ...],
    mnonce: str,
) -> _Result:
    """Compute the measurement a correct launch of IMAGE reports (hex and base64 of measure||mnonce)."""
    inputs = _measure_inputs(image, kernel, ramdisk, policy, api, build, vmsa)
    key = files.read_tik(tik, tk)
    m = owner_measurement.expected_measurement(**inputs, tik=key, mnonce=parse_mnonce(mnonce))
    return _Result(
        [f"measure {m.measure.hex()}", f"mnonce  {m.mnonce.hex()}", f"base64  {m.to_base64()}"],
        measure=m.measure.hex(),
        mnonce=m.mnonce.hex(),
        base64=m.to_base64(),
    )


@main.command("verify-measurement")
@_measure_options
@click.option("--measurement", "reported", required=True, help="LAUNCH_MEASURE as base64 (measure||mnonce).")
@_verb
def verify_measurement_cmd(
    image: str | None,
    kernel: str | None,
    ramdisk: str | None,
    policy: str,
    api: str,
    build: str,
    tik: str | None,
    tk: str | None,
    vmsa: tuple[str, ...],
    reported: str,
) -> _Result:
    """Check a reported measurement against IMAGE, policy, API version and build (constant-time compare)."""
    inputs = _measure_inputs(image, kernel, ramdisk, policy, api, build, vmsa)
    key = files.read_tik(tik, tk)
    m = LaunchMeasurement.from_base64(reported, "--measurement")
    owner_measurement.verify_measurement(m, **inputs, tik=key)
    return _Result(["measurement OK"], measure=m.measure.hex(), mnonce=m.mnonce.hex())


# -- package-secret -----------------------------------------------------------------------------------------------


@main.command("package-secret")
@click.option("--secret", "secret_path", type=click.Path(dir_okay=False), help="A raw secret (multiple of 16).")
@click.option("--guid", "guids", multiple=True, help="GUID=FILE entry of an OVMF secret table (repeatable).")
@click.option("--tk", type=click.Path(dir_okay=False), help="tmp_tk.bin (TEK||TIK).")
@click.option("--tek", type=click.Path(dir_okay=False), help="TEK file (16 bytes, sevctl).")
@click.option("--tik", type=click.Path(dir_okay=False), help="TIK file (16 bytes, sevctl).")
@click.option("--measurement", "reported", required=True, help="The verified LAUNCH_MEASURE, base64.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to write to.")
@_verb
def package_secret_cmd(
    secret_path: str | None,
    guids: tuple[str, ...],
    tk: str | None,
    tek: str | None,
    tik: str | None,
    reported: str,
    out_dir: str,
) -> _Result:
    """Encrypt a secret for LAUNCH_SECRET: packaged_secret_header.bin and packaged_secret.bin."""
    if (secret_path is None) == (not guids):
        raise InputError("give either --secret FILE or one or more --guid GUID=FILE")
    if secret_path is not None:
        secret = files.read_bytes(secret_path, "secret")
    else:
        entries = []
        for arg in guids:
            guid, path = owner_secret.parse_guid_file_arg(arg)
            entries.append((guid, files.read_bytes(path, f"secret for {guid}")))
        secret = owner_secret.ovmf_secret_table(entries)
    keys = files.read_transport_keys(tk, tek, tik)
    m = LaunchMeasurement.from_base64(reported, "--measurement")
    packaged = owner_secret.package_secret(keys, secret, m)
    written = owner_secret.write_packaged_secret(out_dir, packaged)
    header_b64 = base64.b64encode(packaged.header.to_bytes()).decode()
    secret_b64 = base64.b64encode(packaged.ciphertext).decode()
    return _Result(
        [*(f"wrote {p}" for p in written), f"packet-header {header_b64}", f"secret        {secret_b64}"],
        files=[str(p) for p in written],
        length=len(secret),
        packet_header=header_b64,
        secret=secret_b64,
    )


# -- show-cert ----------------------------------------------------------------------------------------------------


@main.command("show-cert")
@click.argument("path", type=click.Path(dir_okay=False))
@_verb
def show_cert_cmd(path: str) -> _Result:
    """Decode an SEV certificate or an AMD ARK/ASK certificate."""
    cert = certs.parse_any(files.read_bytes(path, "certificate"), path)
    info = cert.describe()
    return _Result([f"{k}: {_cert_field(v)}" for k, v in info.items()], **info)


def _cert_field(value: Any) -> str:
    """A decoded field for people: lists as `a, b`, a signature as `OCA ECDSA_SHA256`."""
    if isinstance(value, dict):
        return " ".join(str(v) for v in value.values())
    if isinstance(value, list | tuple):
        return ", ".join(_cert_field(v) for v in value) or "none"
    return str(value)


main.add_command(snp_group)


def entry() -> None:
    """The `sev-owner` command: `main` with no traceback reaching the user."""
    run_cli(main)


if __name__ == "__main__":  # pragma: no cover
    entry()
