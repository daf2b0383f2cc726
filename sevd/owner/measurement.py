"""The measurement a guest owner expects, and its constant-time comparison with what the platform reports."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from sevd.abi import launch
from sevd.abi.launch import LaunchMeasurement
from sevd.errors import VerificationError


def image_digest(image: bytes, vmsas: Sequence[bytes] = ()) -> bytes:
    """SHA-256 over the boot image and then (SEV-ES) each VMSA page, the order the platform measures them."""
    return launch.launch_digest([image, *vmsas])


def expected_measurement(
    image: bytes,
    policy: int,
    api_major: int,
    api_minor: int,
    build: int,
    tik: bytes,
    mnonce: bytes,
    vmsas: Sequence[bytes] = (),
) -> LaunchMeasurement:
    digest = image_digest(image, vmsas)
    return LaunchMeasurement(launch.measurement(tik, api_major, api_minor, build, policy, digest, mnonce), mnonce)


def verify_measurement(
    reported: LaunchMeasurement,
    image: bytes,
    policy: int,
    api_major: int,
    api_minor: int,
    build: int,
    tik: bytes,
    vmsas: Sequence[bytes] = (),
) -> None:
    """Raise VerificationError unless `reported` is the measurement of exactly this launch."""
    expected = expected_measurement(image, policy, api_major, api_minor, build, tik, reported.mnonce, vmsas)
    if not hmac.compare_digest(expected.measure, reported.measure):
        raise VerificationError(
            "measurement does not match the image, policy, API version and build given (or a different TIK)"
        )
