"""Make a launch session for a platform: a fresh GODH key, fresh TEK/TIK, and the 0x80 session blob."""

from __future__ import annotations

import base64
import dataclasses
import os
import pathlib

from cryptography.hazmat.primitives.asymmetric import ec

from sevd.abi import launch
from sevd.abi.certs import Algo, SevCert, Usage
from sevd.abi.launch import LaunchSession, TransportKeys
from sevd.errors import InputError
from sevd.owner import files


@dataclasses.dataclass(frozen=True, repr=False)
class OwnerSession:
    godh: SevCert
    blob: LaunchSession
    keys: TransportKeys
    policy: int

    def __repr__(self) -> str:
        return f"OwnerSession(policy=0x{self.policy:08x}, keys=<hidden>)"


def make_session(
    pdh: SevCert,
    policy: int,
    keys: TransportKeys | None = None,
    godh_key: ec.EllipticCurvePrivateKey | None = None,
) -> OwnerSession:
    """Everything LAUNCH_START needs from the owner, for the platform holding `pdh`.

    The GODH private key is used once, for the ECDH, and then dropped.
    """
    if pdh.usage != Usage.PDH:
        raise InputError(f"session: the platform key must be a PDH, got {pdh.role}")
    peer = pdh.public_key()
    if not isinstance(peer, ec.EllipticCurvePublicKey):
        raise InputError("session: the PDH must be a P-384 ECDH key")
    keys = keys or TransportKeys.generate()
    godh_key = godh_key or ec.generate_private_key(ec.SECP384R1())
    godh = SevCert.for_ec_key(godh_key.public_key(), Usage.PDH, Algo.ECDH_SHA256)
    nonce = os.urandom(launch.NONCE_SIZE)
    wrapping = launch.derive_kek_kik(launch.shared_secret(godh_key, peer), nonce)
    blob = launch.wrap_transport_keys(keys, wrapping, policy, nonce)
    return OwnerSession(godh, blob, keys, policy)


def write_session(out_dir: str | os.PathLike[str], session: OwnerSession, name: str) -> list[pathlib.Path]:
    """Write the session in both sev-tool's and sevctl's layouts; key files are mode 0600."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = files.sevctl_names(name)
    godh = session.godh.to_bytes()
    blob = session.blob.to_bytes()
    return [
        files.write_public(out / files.GODH, godh),
        files.write_public(out / files.LAUNCH_BLOB, blob),
        files.write_private(out / files.TK, session.keys.to_bytes()),
        files.write_public(out / names["godh"], base64.b64encode(godh)),
        files.write_public(out / names["session"], base64.b64encode(blob)),
        files.write_private(out / names["tek"], session.keys.tek),
        files.write_private(out / names["tik"], session.keys.tik),
    ]
