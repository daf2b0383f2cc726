"""`xl-sev create --attest DIR`: the guest owner's steps done on the host, with the owner library, on files
in DIR (the same files `sev-owner` writes, so DIR can be checked with it afterwards)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from sevd.abi.launch import LaunchMeasurement, check_secret_length
from sevd.abi.vmsa import reset_vmsas
from sevd.config import Config
from sevd.owner import files
from sevd.owner.chain import verify_chain_dir
from sevd.owner.measurement import verify_measurement
from sevd.owner.secret import package_secret, write_packaged_secret
from sevd.owner.session import OwnerSession, make_session, write_session
from sevd.toolstack.export import export_chain
from sevd.toolstack.waiting import Reporter
from sevd.xen import xlcfg


@dataclasses.dataclass
class LocalOwner:
    """The local owner of one launch: its directory, and the session it made there."""

    directory: Path
    session: OwnerSession | None = None

    def prepare(self, config: Config, guest: xlcfg.GuestConfig, reporter: Reporter) -> OwnerSession:
        """Export and verify the platform's chain into the directory; make and write a launch session."""
        self.directory.mkdir(parents=True, exist_ok=True)
        export_chain(config, self.directory)
        report = verify_chain_dir(self.directory, config.owner_roots or None)
        reporter.line(
            f"owner: platform chain verified: PDH <- PEK <- (OCA, CEK <- ASK <- ARK), roots: {report.describe_roots()}"
        )
        if report.warning:
            reporter.line(f"owner: {report.warning}")
        self.session = make_session(report.chain.pdh, int(guest.policy))
        write_session(self.directory, self.session, guest.name)
        reporter.line(
            f"owner: launch session for policy {guest.policy} written to {self.directory} (sev-tool + sevctl)"
        )
        return self.session

    def _session(self) -> OwnerSession:
        if self.session is None:
            raise RuntimeError("LocalOwner.prepare() makes the session first")
        return self.session

    def verify(self, nodes: dict[str, str], guest: xlcfg.GuestConfig, image: bytes) -> LaunchMeasurement:
        """The measurement sevd published, checked against the image, policy and firmware (VerificationError)."""
        measured = LaunchMeasurement.from_base64(nodes["measurement"], "measurement node")
        api_major, api_minor = (int(x) for x in nodes["api"].split("."))
        # SEV-ES: each vCPU's VMSA is measured after the image; the owner knows them (reset state).
        vmsas = reset_vmsas(guest.vcpus) if guest.es else []
        verify_measurement(
            measured,
            image,
            int(guest.policy),
            api_major,
            api_minor,
            int(nodes["build"]),
            self._session().keys.tik,
            vmsas,
        )
        return measured

    def package(self, secret: bytes, measured: LaunchMeasurement) -> tuple[bytes, bytes]:
        """The secret wrapped for LAUNCH_SECRET (header, ciphertext), also written to the directory."""
        packaged = package_secret(self._session().keys, secret, measured)
        write_packaged_secret(self.directory, packaged)
        return packaged.header.to_bytes(), packaged.ciphertext


def read_secret(path: str | None, owner_dir: Path) -> tuple[bytes, str]:
    """The secret to inject and where it is: the file given, else 32 random bytes written to DIR/secret.bin."""
    if path is not None:
        secret = files.read_bytes(path, "secret")
        check_secret_length(len(secret), f"--secret {path}")
        return secret, path
    secret = os.urandom(32)
    owner_dir.mkdir(parents=True, exist_ok=True)
    target = owner_dir / "secret.bin"
    files.write_private(target, secret)
    return secret, str(target)
