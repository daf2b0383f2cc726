"""Units of the SEV and Xen ABIs: the page size and the kinds of number that must not be mixed up.

`NewType`s cost nothing at run time; mypy refuses a domid where an ASID is expected.
"""

from __future__ import annotations

from typing import NewType

PAGE_SIZE = 4096  # x86 base page: Xen's frames, the PSP's LAUNCH_UPDATE_DATA granularity (SEV API 6.3)

Handle = NewType("Handle", int)  # firmware guest handle (SEV API 5.1: 32-bit, 0 = none)
Asid = NewType("Asid", int)  # address-space id Xen bound to an SEV domain (CPUID 0x8000001F)
DomId = NewType("DomId", int)  # Xen domain id
Gpa = NewType("Gpa", int)  # guest-physical address
Spa = NewType("Spa", int)  # system-physical (machine) address: what the PSP is given for guest memory

NO_HANDLE = Handle(0)  # LAUNCH_START with handle 0 asks for a new guest context
HANDLE_MAX = 0xFFFFFFFF  # a handle is a 32-bit field of the command buffers
MAX_HANDLES = 1024  # guest contexts the firmware holds at once; one more LAUNCH_START is RESOURCE_LIMIT
# vCPUs of one PVH or HVM domain (Xen's HVM_MAX_VCPUS); the SEV API sets no lower bound of its own: an SEV-ES
# guest has one VMSA page (one LAUNCH_UPDATE_VMSA) per vCPU.
MAX_VCPUS = 128
PHYS_ADDR_LIMIT = 1 << 52  # x86-64 physical addresses (guest- and system-) are below this
