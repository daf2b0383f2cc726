"""`sev-owner snp ...`: the guest owner's SEV-SNP verbs (click only; the work is in sevd.owner.snp)."""

from __future__ import annotations

import base64
import binascii
import pathlib

import click

from sevd.abi import snp
from sevd.cli.owner_verbs import _Result, _verb
from sevd.errors import InputError
from sevd.owner import files, keyserver
from sevd.owner.snp import idblock, kds, measure, report, vmsa
from sevd.owner.snp.ovmf import OvmfImage


@click.group("snp")
def snp_group() -> None:
    """SEV-SNP: launch digests, ID blocks, attestation reports, VCEKs."""


def _hex(text: str | None, option: str, size: int | None = None, *, pad: bool = False) -> bytes | None:
    if text is None:
        return None
    try:
        data = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise InputError(f"{option}: not hex") from None
    if size is not None:
        if pad and len(data) <= size:
            data = data + bytes(size - len(data))
        if len(data) != size:
            raise InputError(f"{option}: {len(data)} bytes, expected {size} ({2 * size} hex digits)")
    return data


def _int(text: str | None, option: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        raise InputError(f"{option} {text!r}: not a number") from None


def _snp_policy(text: str, option: str = "--policy") -> int:
    try:
        return int(snp.SnpPolicy.parse(text))
    except InputError as exc:
        raise InputError(f"{option}: {str(exc).removeprefix('SNP policy: ')}") from None


# -- measure --------------------------------------------------------------------------------------------------------


def _vcpu_sig(
    vcpu_type: str | None, vcpu_sig: str | None, family: int | None, model: int | None, stepping: int | None
) -> int | None:
    if family is not None:
        return vmsa.cpu_sig(family, model or 0, stepping or 0)
    if vcpu_sig is not None:
        return _int(vcpu_sig, "--vcpu-sig")
    if vcpu_type is not None:
        if vcpu_type not in vmsa.VCPU_TYPES:
            raise InputError(f"--vcpu-type {vcpu_type!r}: one of {', '.join(vmsa.VCPU_TYPES)}")
        return vmsa.VCPU_TYPES[vcpu_type]
    return None


@snp_group.command("measure")
@click.option("--mode", default="snp", show_default=True, help="Guest mode (only snp).")
@click.option("--vcpus", type=int, help="Number of guest vCPUs.")
@click.option("--vcpu-type", help="QEMU CPU model, e.g. EPYC-v4 or EPYC-Milan.")
@click.option("--vcpu-sig", help="CPUID signature (Fn0000_0001_EAX), e.g. 0x800f12.")
@click.option("--vcpu-family", type=int, help="CPU family (with --vcpu-model/--vcpu-stepping).")
@click.option("--vcpu-model", type=int, help="CPU model.")
@click.option("--vcpu-stepping", type=int, help="CPU stepping.")
@click.option("--vmm-type", default="QEMU", show_default=True, help="QEMU, EC2 or xen-pvh.")
@click.option("--ovmf", type=click.Path(dir_okay=False), help="The OVMF image.")
@click.option("--kernel", type=click.Path(dir_okay=False), help="Kernel, measured through OVMF's SEV hashes table.")
@click.option("--initrd", type=click.Path(dir_okay=False), help="Initrd (with --kernel).")
@click.option("--append", help="Kernel command line (with --kernel).")
@click.option("--pvh-kernel", type=click.Path(dir_okay=False), help="Xen PVH: the kernel sevd loads and measures.")
@click.option("--pvh-ramdisk", type=click.Path(dir_okay=False), help="Xen PVH: the ramdisk (module0).")
@click.option("--pvh-module-gpa", help="Xen PVH: the ramdisk's GPA when it is not right after the kernel.")
@click.option("--pvh-start-info-gpa", help="Xen PVH: the hvm_start_info GPA (RBX) if not libxenguest's default.")
@click.option("--guest-features", default="0x1", show_default=True, help="SEV_FEATURES of the VMSAs.")
@click.option("--output-format", type=click.Choice(["hex", "base64"]), default="hex", show_default=True)
@click.option("--dump-vmsa", is_flag=True, help="Write the measured VMSAs to vmsa<N>.bin.")
@click.option("-v", "--verbose", is_flag=True, help="Say what the digest is.")
@_verb
def measure_cmd(
    mode: str,
    vcpus: int | None,
    vcpu_type: str | None,
    vcpu_sig: str | None,
    vcpu_family: int | None,
    vcpu_model: int | None,
    vcpu_stepping: int | None,
    vmm_type: str,
    ovmf: str | None,
    kernel: str | None,
    initrd: str | None,
    append: str | None,
    pvh_kernel: str | None,
    pvh_ramdisk: str | None,
    pvh_module_gpa: str | None,
    pvh_start_info_gpa: str | None,
    guest_features: str,
    output_format: str,
    dump_vmsa: bool,
    verbose: bool,
) -> _Result:
    """The SNP launch digest, as `sev-snp-measure --mode snp` computes it (OVMF under QEMU or EC2), or of a Xen PVH
    guest as sevd launches it (--pvh-kernel). The digest is printed alone on the last line."""
    if mode != "snp":
        raise InputError(f"--mode {mode!r}: only snp (use `sev-owner measurement` for SEV and SEV-ES)")
    vmm = vmsa.VmmType.XEN_PVH if pvh_kernel and vmm_type == "QEMU" else vmsa.VmmType.parse(vmm_type)
    sig = _vcpu_sig(vcpu_type, vcpu_sig, vcpu_family, vcpu_model, vcpu_stepping)
    features = _int(guest_features, "--guest-features")
    assert features is not None
    if (initrd or append) and not kernel:
        raise InputError("--initrd and --append go with --kernel")
    if vmm is vmsa.VmmType.XEN_PVH:
        if pvh_kernel is None or ovmf is not None or kernel is not None:
            raise InputError("--vmm-type xen-pvh measures --pvh-kernel [--pvh-ramdisk], without --ovmf or --kernel")
        if sig is None:
            raise InputError("missing --vcpu-type, --vcpu-sig or --vcpu-family (the VMSA's RDX) for xen-pvh")
        from sevd.owner.pvh import load_pvh_image

        ramdisk = files.read_bytes(pvh_ramdisk, "ramdisk") if pvh_ramdisk else None
        image = load_pvh_image(
            files.read_bytes(pvh_kernel, "kernel"), ramdisk, kernel_name=pvh_kernel, ramdisk_name=str(pvh_ramdisk)
        )
        layout = measure.pvh_layout(
            image, _int(pvh_module_gpa, "--pvh-module-gpa"), _int(pvh_start_info_gpa, "--pvh-start-info-gpa")
        )
        ld = measure.pvh_digest(image, layout, sig, features)
    else:
        if ovmf is None:
            raise InputError("--ovmf is required (or --pvh-kernel for a Xen PVH guest)")
        if pvh_kernel or pvh_ramdisk:
            raise InputError("--pvh-kernel/--pvh-ramdisk go with --vmm-type xen-pvh")
        if vcpus is None:
            raise InputError("missing --vcpus N in guest mode 'snp'")
        if sig is None:
            if vmm is vmsa.VmmType.QEMU:
                raise InputError("missing --vcpu-type or --vcpu-sig or --vcpu-family in guest mode 'snp'")
            sig = 0
        hashes = None
        if kernel is not None:
            rd = files.read_bytes(initrd, "initrd") if initrd else None
            hashes = measure.KernelHashes(files.read_bytes(kernel, "kernel"), rd, append)
        image_ovmf = OvmfImage.parse(files.read_bytes(ovmf, "OVMF image"), ovmf)
        ld = measure.ovmf_digest(image_ovmf, vcpus, sig, features, vmm, hashes)
    lines = []
    if dump_vmsa:
        for i, page in enumerate(ld.vmsas):
            lines.append(f"wrote {files.write_public(pathlib.Path(f'vmsa{i}.bin'), page)}")
    text = ld.digest.hex() if output_format == "hex" else base64.b64encode(ld.digest).decode()
    lines.append(f"Calculated SEV_SNP guest measurement: {text}" if verbose else text)
    return _Result(lines, measurement=ld.digest.hex(), base64=base64.b64encode(ld.digest).decode(), pages=ld.pages)


# -- id-block -------------------------------------------------------------------------------------------------------


@snp_group.command("id-block")
@click.option("--measurement", required=True, help="The expected launch digest, base64 (or 96 hex digits).")
@click.option("--idkey", required=True, type=click.Path(dir_okay=False), help="ID key, ECDSA P-384 PEM.")
@click.option("--authorkey", required=True, type=click.Path(dir_okay=False), help="Author key, ECDSA P-384 PEM.")
@click.option("--policy", default=hex(idblock.DEFAULT_POLICY), show_default=True, help="SNP guest policy.")
@click.option("--family-id", help="16 bytes, hex (default zeros).")
@click.option("--image-id", help="16 bytes, hex (default zeros).")
@click.option("--guest-svn", default="0", show_default=True, help="Guest SVN.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Also write id_block.b64, id_auth.b64.")
@_verb
def id_block_cmd(
    measurement: str,
    idkey: str,
    authorkey: str,
    policy: str,
    family_id: str | None,
    image_id: str | None,
    guest_svn: str,
    out_dir: str | None,
) -> _Result:
    """An ID block and its ID authentication for SNP_LAUNCH_FINISH, printed as snp-create-id-block prints them."""
    digest = _measurement(measurement)
    svn = _int(guest_svn, "--guest-svn")
    assert svn is not None
    if not 0 <= svn < 1 << 32:
        raise InputError(f"--guest-svn {guest_svn}: a 32-bit number")
    block = snp.IdBlock(
        launch_digest=digest,
        family_id=_hex(family_id, "--family-id", snp.FAMILY_ID_SIZE) or bytes(snp.FAMILY_ID_SIZE),
        image_id=_hex(image_id, "--image-id", snp.IMAGE_ID_SIZE) or bytes(snp.IMAGE_ID_SIZE),
        guest_svn=svn,
        policy=_snp_policy(policy),
    )
    signed = idblock.sign_id_block(
        block,
        idblock.load_private_key(files.read_bytes(idkey, "ID key"), idkey),
        idblock.load_private_key(files.read_bytes(authorkey, "author key"), authorkey),
    )
    lines = signed.lines()
    written = []
    if out_dir is not None:
        d = pathlib.Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        for name, blob in (("id_block.b64", signed.id_block), ("id_auth.b64", signed.id_auth)):
            written.append(str(files.write_public(d / name, base64.b64encode(blob) + b"\n")))
    b64 = base64.b64encode
    return _Result(
        [*(f"wrote {p}" for p in written), *lines] if written else lines,
        id_block=b64(signed.id_block).decode(),
        id_auth=b64(signed.id_auth).decode(),
        id_key_digest=b64(signed.id_key_digest).decode(),
        author_key_digest=b64(signed.author_key_digest).decode(),
        files=written,
    )


def _measurement(text: str) -> bytes:
    if len(text) == 2 * snp.DIGEST_SIZE:
        data = _hex(text, "--measurement")
        assert data is not None
        return data
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("--measurement: neither base64 nor 96 hex digits") from None
    if len(data) != snp.DIGEST_SIZE:
        raise InputError(f"--measurement: {len(data)} bytes, an SNP launch digest is {snp.DIGEST_SIZE}")
    return data


# -- verify-report ----------------------------------------------------------------------------------------------


@snp_group.command("verify-report")
@click.option("--report", "report_path", required=True, type=click.Path(dir_okay=False), help="report.bin.")
@click.option("--certs", "certs_dir", required=True, type=click.Path(file_okay=False), help="vcek.pem/der (ask, ark).")
@click.option("--roots", type=click.Path(file_okay=False), help="Trust ark.pem + ask.pem here, not AMD's.")
@click.option("--measurement", help="Expected launch digest, hex (96 digits).")
@click.option("--policy", help="Expected guest policy.")
@click.option("--host-data", help="Expected HOST_DATA, hex (64 digits).")
@click.option("--report-data", help="Expected REPORT_DATA, hex (up to 128 digits, zero-padded).")
@click.option("--min-tcb", help="Minimum REPORTED_TCB, e.g. bl=3,tee=0,snp=8,ucode=115[,fmc=1].")
@_verb
def verify_report_cmd(
    report_path: str,
    certs_dir: str,
    roots: str | None,
    measurement: str | None,
    policy: str | None,
    host_data: str | None,
    report_data: str | None,
    min_tcb: str | None,
) -> _Result:
    """Verify an SNP attestation report: its signature, the VCEK chain up to AMD's bundled SNP roots, the VCEK's
    TCB, and the expectations given. Exit 0 valid, 1 invalid (naming the check), 2 unusable input."""
    expect = report.Expectations(
        measurement=_hex(measurement, "--measurement", snp.DIGEST_SIZE),
        policy=None if policy is None else _snp_policy(policy),
        host_data=_hex(host_data, "--host-data", snp.HOST_DATA_SIZE),
        report_data=_hex(report_data, "--report-data", snp.REPORT_DATA_SIZE, pad=True),
        min_tcb=None if min_tcb is None else report.parse_min_tcb(min_tcb),
    )
    v = report.verify_report(report_path, certs_dir, expect, roots)
    r = v.report
    lines = [
        f"report OK: signed by the {v.endorsement}, chain to roots: {v.describe_roots()}",
        f"checked: {', '.join(v.checked)}",
        f"measurement {r.measurement.hex()}",
        f"policy 0x{r.policy:x}  reported TCB {r.reported_tcb.describe()}",
    ]
    return _Result(
        lines + ([v.warning] if v.warning else []),
        endorsement=v.endorsement,
        roots=v.roots,
        generation=v.generation,
        amd_roots=v.amd,
        checked=v.checked,
        measurement=r.measurement.hex(),
        policy=r.policy,
        reported_tcb=r.reported_tcb.describe(),
        **({"warning": v.warning} if v.warning else {}),
    )


# -- fetch-vcek -------------------------------------------------------------------------------------------------


@snp_group.command("fetch-vcek")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--report", "report_path", required=True, type=click.Path(dir_okay=False), help="report.bin.")
@click.option("--product", help="Milan, Genoa or Turin (default: from the report's CPUID).")
@click.option("--kds-url", default=keyserver.AMD_KDS_URL, show_default=True, help="Key server base URL.")
@click.option("--cache", type=click.Path(file_okay=False), help="Cache directory (default $SEVD_CACHE_DIR/kds).")
@click.option("--encoding", type=click.Choice(["pem", "der"]), default="pem", show_default=True)
@click.option("--crl", is_flag=True, help="Also fetch the product's CRL (crl.pem/der).")
@_verb
def fetch_vcek_cmd(
    directory: str, report_path: str, product: str | None, kds_url: str, cache: str | None, encoding: str, crl: bool
) -> _Result:
    """Fetch the VCEK of the report's chip and REPORTED_TCB, and the product's ASK and ARK, into DIR with
    snpguest's names (vcek.pem ask.pem ark.pem). Nothing fetched is trusted: verify with verify-report."""
    rep = snp.AttestationReport.parse(files.read_bytes(report_path, "attestation report"), report_path)
    cache_dir = pathlib.Path(cache) if cache else keyserver.default_cache_dir()
    server = keyserver.KeyServer(url=kds_url, cache_dir=cache_dir)
    done = kds.fetch_vcek_dir(directory, rep, server, kds.product_of(rep, product), encoding=encoding, crl=crl)
    return _Result(
        [*(f"from {u}" for u in done.urls), *(f"wrote {p}" for p in done.paths)],
        files=[str(p) for p in done.paths],
        urls=done.urls,
        product=done.product.value,
    )
