"""xen-patches/: every patch is a well-formed `git format-patch` file with a reviewable message.

Fast and offline: whether the series applies and builds is `make xen-check`'s job.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "xen-patches"
XEN = sorted((ROOT / "xen").glob("*.patch"))
LINUX = sorted((ROOT / "linux").glob("*.patch"))
SIGNOFF = "Signed-off-by: sevd developers <dev@sevd.invalid>"
XEN_SUBJECT = re.compile(r"^(x86/svm|x86/hvm|x86/cpuid|xen/domctl|x86/[a-z]+|xsm|tools/[a-z]+): \S")
LINUX_SUBJECT = re.compile(r"^crypto: ccp - \S")


def parse(path: Path) -> dict:
    text = path.read_text()
    head, sep, body = text.partition("\n\n")
    assert sep, f"{path.name}: no blank line after the mail header"
    headers: dict[str, str] = {}
    last = None
    for line in head.splitlines()[1:]:
        if line.startswith(" ") and last:
            headers[last] += line
        else:
            last, _, value = line.partition(": ")
            headers[last] = value
    message, sep, rest = body.partition("\n---\n")
    assert sep, f"{path.name}: no '---' separator before the diffstat"
    return {"first": head.splitlines()[0], "headers": headers, "message": message, "rest": rest, "text": text}


def subject(p: dict) -> str:
    return re.sub(r"^\[PATCH[^\]]*\]\s*", "", p["headers"]["Subject"])


def test_there_is_a_series():
    assert len(XEN) >= 3
    assert [p.name for p in LINUX] == ["0001-crypto-ccp-add-SEV_ISSUE_GUEST_CMD.patch"]


def test_xen_series_is_numbered_from_one_without_gaps():
    numbers = [int(p.name[:4]) for p in XEN]
    assert numbers == list(range(1, len(XEN) + 1))
    for path in XEN:
        assert re.fullmatch(r"\d{4}-[A-Za-z0-9._-]+\.patch", path.name)


@pytest.mark.parametrize("path", XEN + LINUX, ids=lambda p: p.name)
def test_patch_is_git_format_patch(path):
    p = parse(path)
    assert re.fullmatch(r"From [0-9a-f]{40} Mon Sep 17 00:00:00 2001", p["first"])
    assert p["headers"]["From"] == "sevd developers <dev@sevd.invalid>"
    assert "Date" in p["headers"]
    assert p["headers"]["Subject"].startswith("[PATCH")
    assert re.search(r"^ \d+ files? changed", p["rest"], re.M), "diffstat"
    diffs = re.findall(r"^diff --git a/(\S+) b/(\S+)$", p["rest"], re.M)
    assert diffs, "no diff"
    for a, b in diffs:
        assert a == b
    # Every hunk header is well-formed and every file has its ---/+++ lines.
    assert len(re.findall(r"^\+\+\+ (?:b/\S+|/dev/null)$", p["rest"], re.M)) == len(diffs)
    for hunk in re.findall(r"^@@ .* @@", p["rest"], re.M):
        assert re.match(r"^@@ -\d+(,\d+)? \+\d+(,\d+)? @@", hunk)
    assert "\t" not in subject(p)


@pytest.mark.parametrize("path", XEN, ids=lambda p: p.name)
def test_xen_patch_subject_and_message(path):
    p = parse(path)
    title = subject(p)
    assert XEN_SUBJECT.match(title), title
    assert len(title) <= 100
    lines = p["message"].strip().splitlines()
    assert lines[-1] == SIGNOFF
    explanation = [line for line in lines[:-1] if line.strip()]
    assert len(explanation) >= 5, "the message must say why"
    for a, _ in re.findall(r"^diff --git a/(\S+) b/(\S+)$", p["rest"], re.M):
        assert a.startswith("xen/"), f"{a}: the series touches the hypervisor only"


@pytest.mark.parametrize("path", LINUX, ids=lambda p: p.name)
def test_linux_patch_subject_and_message(path):
    p = parse(path)
    assert LINUX_SUBJECT.match(subject(p)), subject(p)
    lines = p["message"].strip().splitlines()
    assert lines[-1] == SIGNOFF
    assert len([line for line in lines if line.strip()]) >= 5
    files = {a for a, _ in re.findall(r"^diff --git a/(\S+) b/(\S+)$", p["rest"], re.M)}
    assert files == {"drivers/crypto/ccp/sev-dev.c", "include/uapi/linux/psp-sev.h"}
    assert "#define SEV_ISSUE_GUEST_CMD\t_IOWR(SEV_IOC_TYPE, 0x1, struct sev_issue_cmd)" in p["text"]


def test_the_domctl_patch_adds_the_public_interface():
    text = "".join(p.read_text() for p in XEN)
    assert "+#define XEN_DOMCTL_sev_op                        87" in text
    assert "+struct xen_domctl_sev_op {" in text
    assert "XEN_DOMCTL_INTERFACE_VERSION" not in "".join(
        line for line in text.splitlines(True) if line.startswith(("+#define", "-#define"))
    )
