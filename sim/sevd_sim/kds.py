"""The simulated AMD: it signs each simulated chip's CEK and serves it as AMD's key distribution server does.

Real firmware exports a CEK AMD has not signed; AMD signs every chip's CEK once and serves it by the chip id
(GET_ID) at https://kdsintf.amd.com/cek/id/<id hex>, and publishes each generation's ASK+ARK as
ask_ark_<generation>.cert.  The simulated host is the key server for its own chip, in a directory laid out as
those URL paths (sevd.owner.keyserver holds them), so `file://HOST/kds` is a key-server base URL that works:

    HOST/kds/cek/id/<chip id hex>                          the CEK signed by the simulated ASK
    HOST/kds/wp-content/resources/ask_ark_simulated.cert   the simulated ASK then ARK
    HOST/simulated-amd-roots/{ark,ask}.cert                the same ARK and ASK, for `sev-owner --roots`

The tests also serve HOST/kds over HTTP on 127.0.0.1.

For SEV-SNP (a host made with `--snp`) it also serves, at AMD's KDS paths (`sevd.abi.snp.kds_vcek_path`):

    HOST/kds/vcek/v1/<product>/<hwid>?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..   the VCEK (DER) for that TCB
    HOST/kds/vcek/v1/<product>/cert_chain                                       the ASK then the ARK (PEM)

The VCEK file's name is the URL path with its query string, `?` included.
"""

from __future__ import annotations

from pathlib import Path

from sevd.abi import snp
from sevd.abi.certs import Algo, SevCert, Usage
from sevd.abi.snp import Product, TcbVersion
from sevd.durable import atomic_write
from sevd.owner import keyserver
from sevd_sim.psp.identity import simulated_amd_root

GENERATION = "simulated"  # the ask_ark file name of the simulated root; not one of AMD's generations


def kds_dir(host: Path | str) -> Path:
    return Path(host) / "kds"


def kds_url(host: Path | str) -> str:
    return kds_dir(host).resolve().as_uri()


def roots_dir(host: Path | str) -> Path:
    """The simulated AMD root as ark.cert + ask.cert: what an owner names with --roots to trust it."""
    return Path(host) / "simulated-amd-roots"


def signed_cek(host: Path | str, chip_id: bytes) -> SevCert:
    """The CEK this key server serves for `chip_id` (signed by the simulated ASK)."""
    path = kds_dir(host) / keyserver.cek_path(chip_id)
    return SevCert.parse(path.read_bytes(), str(path))


def publish_vcek(host: Path | str, product: Product, chip_id: bytes, chip_secret: bytes, tcb: TcbVersion) -> Path:
    """Publish the chip's VCEK for `tcb`, and the product's ASK+ARK chain, under AMD's KDS paths."""
    from cryptography.hazmat.primitives import serialization

    from sevd_sim.psp import snp_keys

    ark, ask, _key = snp_keys.simulated_snp_root(product)
    vcek = snp_keys.vcek_certificate(product, chip_id, chip_secret, tcb)
    tree = kds_dir(host)
    vcek_file = tree / snp.kds_vcek_path(product, chip_id, tcb).lstrip("/")
    chain_file = tree / snp.kds_chain_path(product).lstrip("/")
    for path, data in (
        (vcek_file, vcek.public_bytes(serialization.Encoding.DER)),
        (chain_file, snp_keys.pem(ask) + snp_keys.pem(ark)),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, 0o644)
    return vcek_file


def publish(host: Path | str, chip_id: bytes, cek: SevCert) -> None:
    """Sign the chip's CEK with the simulated ASK and lay it out, with the ASK+ARK, as the key server's tree."""
    ark, ask, ask_key = simulated_amd_root()
    if any(not s.is_empty() for s in cek.sigs):
        raise ValueError("the firmware's CEK is published unsigned; the simulated AMD adds the only signature")
    signed = cek.signed_by(ask_key, Usage.ASK, Algo.RSA_SHA384)
    tree = kds_dir(host)
    cek_file = tree / keyserver.cek_path(chip_id)
    ask_ark = tree / keyserver.MIRROR_ROOTS_PATH / keyserver.ask_ark_name(GENERATION)
    for path, data in ((cek_file, signed.to_bytes()), (ask_ark, ask + ark)):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, 0o644)
    roots = roots_dir(host)
    roots.mkdir(parents=True, exist_ok=True)
    atomic_write(roots / "ark.cert", ark, 0o644)
    atomic_write(roots / "ask.cert", ask, 0o644)
