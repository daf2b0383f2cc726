"""Builds sevd._psp, the one definition of every buffer that crosses the /dev/sev boundary.

The kernel's own <linux/psp-sev.h> supplies struct sev_issue_cmd, the sev_user_data_* platform
buffers and SEV_ISSUE_CMD: they are declared here with "...;" so the C compiler, not this file,
decides their layout.  The firmware command buffers of the guest commands (AMD SEV API 0.24) are
not in the uapi header; they are written once below, packed as the spec lays them out, and that
same text is both compiled and handed to cffi, so the real device client and the simulated PSP
parse identical bytes.
"""

import sys
from typing import Any

from cffi import FFI

# Firmware command buffers for guest commands (AMD SEV API 0.24, chapter 6), packed.
# Fields named *address that point at guest memory carry system physical addresses; the
# others (certificates, session, measurement out, packet header, transport buffer) are caller
# addresses the kernel copies through its own buffers, as KVM does.
GUEST_COMMAND_BUFFERS = """
struct sev_data_activate      { uint32_t handle; uint32_t asid; };
struct sev_data_deactivate    { uint32_t handle; };
struct sev_data_decommission  { uint32_t handle; };
struct sev_data_guest_status  { uint32_t handle; uint32_t policy; uint32_t asid; uint8_t state; };
struct sev_data_launch_start  {
    uint32_t handle; uint32_t policy;
    uint64_t dh_cert_address; uint32_t dh_cert_len; uint32_t reserved;
    uint64_t session_address; uint32_t session_len;
};
struct sev_data_launch_update_data { uint32_t handle; uint32_t reserved; uint64_t address; uint32_t len; };
struct sev_data_launch_update_vmsa { uint32_t handle; uint32_t reserved; uint64_t address; uint32_t len; };
struct sev_data_launch_measure     { uint32_t handle; uint32_t reserved; uint64_t address; uint32_t len; };
struct sev_data_launch_secret {
    uint32_t handle; uint32_t reserved1;
    uint64_t hdr_address; uint32_t hdr_len; uint32_t reserved2;
    uint64_t guest_address; uint32_t guest_len; uint32_t reserved3;
    uint64_t trans_address; uint32_t trans_len;
};
struct sev_data_launch_finish { uint32_t handle; };
struct sev_data_dbg { uint32_t handle; uint32_t reserved; uint64_t src_addr; uint64_t dst_addr; uint32_t len; };
"""

# SEV-SNP firmware command buffers (SNP firmware ABI, publication 56860, chapter 8; the same layouts as
# Linux's include/linux/psp-sev.h, which is kernel-internal), packed.  Linux declares some flags as C
# bit-fields; here each such word is one integer field and sevd.abi.snp names its bits (*_FLAGS_*), so the
# layout does not depend on how a compiler packs bit-fields.  Every address is a system physical address.
SNP_COMMAND_BUFFERS = """
struct sev_data_snp_addr { uint64_t address; };
struct sev_data_snp_init_ex {
    uint32_t flags; uint32_t rsvd1; uint64_t list_paddr; uint16_t max_snp_asid; uint8_t rsvd2[46];
};
struct sev_data_snp_shutdown_ex { uint32_t len; uint32_t flags; };
struct sev_data_snp_activate { uint64_t gctx_paddr; uint32_t asid; };
struct sev_data_snp_launch_start {
    uint64_t gctx_paddr; uint64_t policy; uint64_t ma_gctx_paddr; uint32_t flags; uint32_t desired_tsc_khz;
    uint8_t gosvw[16];
};
struct sev_data_snp_launch_update {
    uint64_t gctx_paddr; uint32_t flags; uint32_t rsvd2; uint64_t address;
    uint8_t rsvd3; uint8_t vmpl1_perms; uint8_t vmpl2_perms; uint8_t vmpl3_perms; uint32_t rsvd4;
};
struct sev_data_snp_launch_finish {
    uint64_t gctx_paddr; uint64_t id_block_paddr; uint64_t id_auth_paddr; uint64_t flags; uint8_t host_data[32];
};
struct sev_data_snp_guest_status { uint64_t gctx_paddr; uint64_t address; };
struct sev_data_snp_guest_status_page {
    uint64_t policy; uint32_t asid; uint8_t state; uint8_t rsvd[3]; uint32_t flags; uint32_t rsvd2;
};
struct sev_data_snp_page_reclaim { uint64_t paddr; };
struct sev_data_snp_guest_request { uint64_t gctx_paddr; uint64_t req_paddr; uint64_t res_paddr; };
struct sev_data_snp_dbg { uint64_t gctx_paddr; uint64_t src_addr; uint64_t dst_addr; };
struct sev_data_snp_commit { uint32_t len; };
struct sevd_snp_platform_status {
    uint8_t api_major; uint8_t api_minor; uint8_t state; uint8_t rmp_flags; uint32_t build_id;
    uint32_t flags; uint32_t guest_count; uint64_t current_tcb_version; uint64_t reported_tcb_version;
};
struct sevd_snp_config { uint64_t reported_tcb; uint32_t flags; uint8_t rsvd[52]; };
struct sevd_snp_vlek_load {
    uint32_t len; uint8_t vlek_wrapped_version; uint8_t rsvd[3]; uint64_t vlek_wrapped_address;
};
"""
# The last three are also the user ioctls' buffers (SNP_PLATFORM_STATUS, SNP_SET_CONFIG, SNP_VLEK_LOAD; uapi
# struct sev_user_data_snp_status/_config/_vlek_load since Linux 6.11).  Debian 12's header lacks them and Debian
# 13's has them, so they carry sevd's own names and the spec's sizes are asserted at compile time below.
SNP_SIZES = {
    "sev_data_snp_init_ex": 0x40,
    "sev_data_snp_launch_start": 0x30,
    "sev_data_snp_launch_update": 0x20,
    "sev_data_snp_launch_finish": 0x40,
    "sev_data_snp_guest_status_page": 0x18,
    "sevd_snp_platform_status": 0x20,
    "sevd_snp_config": 0x40,
    "sevd_snp_vlek_load": 0x10,
}

KERNEL_UAPI = """
struct sev_issue_cmd { uint32_t cmd; uint64_t data; uint32_t error; ...; };
struct sev_user_data_status {
    uint8_t api_major; uint8_t api_minor; uint8_t state; uint32_t flags; uint8_t build;
    uint32_t guest_count; ...;
};
struct sev_user_data_pek_csr { uint64_t address; uint32_t length; ...; };
struct sev_user_data_pek_cert_import {
    uint64_t pek_cert_address; uint32_t pek_cert_len; uint64_t oca_cert_address; uint32_t oca_cert_len; ...;
};
struct sev_user_data_pdh_cert_export {
    uint64_t pdh_cert_address; uint32_t pdh_cert_len; uint64_t cert_chain_address; uint32_t cert_chain_len; ...;
};
struct sev_user_data_get_id { uint8_t socket1[64]; uint8_t socket2[64]; ...; };
struct sev_user_data_get_id2 { uint64_t address; uint32_t length; ...; };

#define SEV_ISSUE_CMD ...
#define SEV_ISSUE_GUEST_CMD ...
#define SEV_STATUS_FLAGS_CONFIG_ES ...

/* ioctl(2) on a real fd; returns 0 or -errno, so no errno bookkeeping crosses into Python. */
int sevd_ioctl(int fd, unsigned long request, struct sev_issue_cmd *arg);
"""

ffibuilder = FFI()
ffibuilder.cdef(KERNEL_UAPI)
ffibuilder.cdef(GUEST_COMMAND_BUFFERS, packed=True)
ffibuilder.cdef(SNP_COMMAND_BUFFERS, packed=True)
ffibuilder.set_source(
    "sevd._psp",
    """
#include <errno.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <linux/psp-sev.h>

/* The guest-command ioctl our Dom0 kernel patch adds (xen-patches/linux); a patched header
 * defines it, an unpatched one does not. */
#ifndef SEV_ISSUE_GUEST_CMD
#define SEV_ISSUE_GUEST_CMD _IOWR(SEV_IOC_TYPE, 0x1, struct sev_issue_cmd)
#endif

#pragma pack(push, 1)
"""
    + GUEST_COMMAND_BUFFERS
    + SNP_COMMAND_BUFFERS
    + """
#pragma pack(pop)
"""
    + "".join(f'_Static_assert(sizeof(struct {n}) == {v}, "{n}");\n' for n, v in SNP_SIZES.items())
    + """

int sevd_ioctl(int fd, unsigned long request, struct sev_issue_cmd *arg)
{
    int rc = ioctl(fd, request, arg);
    return rc < 0 ? -errno : rc;
}
""",
)


def stub_text(ffi: Any, lib: Any) -> str:
    """sevd/_psp.pyi, generated from the compiled module so its types are those of the declarations above.

    Each struct becomes a Protocol with its fields (integers as int, arrays as cffi data), `ffi.new` of a
    struct pointer is typed as that Protocol, and `lib` lists the constants and functions.  The text is laid
    out as `ruff format` lays out a stub; `tests/test_psp_stub.py` checks that the file in the tree is this text.
    """
    out = [
        "# Generated by `python cffi_build.py --stub > sevd/_psp.pyi` from the declarations in cffi_build.py;",
        "# tests/test_psp_stub.py fails when the two disagree.",
        "",
        "from typing import Any, Literal, Protocol, overload",
        "",
        "import cffi",
    ]
    structs = sorted(ffi.list_types()[1])
    for name in structs:
        out += ["", f"class {name}(Protocol):"]
        for field, info in ffi.typeof(f"struct {name}").fields:
            kind = "int" if info.type.kind == "primitive" else "Any"
            out.append(f"    {field}: {kind}  # {info.type.cname}")
    out += ["", "class _FFI(cffi.FFI):"]
    for name in structs:
        params = f'self, cdecl: Literal["struct {name} *"], init: Any = None'
        line = f"    def new({params}) -> {name}: ..."
        out += [
            "    @overload",
            *([line] if len(line) <= 120 else ["    def new(", f"        {params}", f"    ) -> {name}: ..."]),
        ]
    out += [
        "    @overload",
        "    def new(self, cdecl: str | cffi.FFI.CType, init: Any = None) -> Any: ...",
        "    def cast(self, cdecl: str | cffi.FFI.CType, source: Any) -> Any: ...",
        "",
        "class _Lib:",
    ]
    for name in sorted(dir(lib)):
        value = getattr(lib, name)
        if isinstance(value, int):
            out.append(f"    {name}: int")
            continue
        ctype = ffi.typeof(value)
        args = []
        for i, arg in enumerate(ctype.args):
            if arg.kind == "primitive":
                args.append(f"a{i}: int")
            elif arg.kind == "pointer" and arg.item.kind == "struct":
                args.append(f"a{i}: {arg.item.cname.removeprefix('struct ')}")
            else:
                args.append(f"a{i}: Any")
        result = "int" if ctype.result.kind == "primitive" else "Any"
        out.append(f"    def {name}(self, {', '.join(args)}, /) -> {result}: ...")
    out += ["", "ffi: _FFI", "lib: _Lib", ""]
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:] == ["--stub"]:
        from sevd._psp import ffi, lib  # the module this file built

        sys.stdout.write(stub_text(ffi, lib))
    else:
        ffibuilder.compile(verbose=True)
