"""Builds sevd._psp, the one definition of every buffer that crosses the /dev/sev boundary.

The kernel's own <linux/psp-sev.h> supplies struct sev_issue_cmd, the sev_user_data_* platform
buffers and SEV_ISSUE_CMD: they are declared here with "...;" so the C compiler, not this file,
decides their layout.  The firmware command buffers of the guest commands (AMD SEV API 0.24) are
not in the uapi header; they are written once below, packed as the spec lays them out, and that
same text is both compiled and handed to cffi, so the real device client and the simulated PSP
parse identical bytes.
"""

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
    + """
#pragma pack(pop)

int sevd_ioctl(int fd, unsigned long request, struct sev_issue_cmd *arg)
{
    int rc = ioctl(fd, request, arg);
    return rc < 0 ? -errno : rc;
}
""",
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
