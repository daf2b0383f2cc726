"""The SEV firmware's state machines as tables, to be read side by side with the SEV API.

Sources: AMD SEV API 0.24 and docs/simulated-psp.md (states, check order and statuses read from
AMD's published PSP firmware, the Linux driver and KVM).  Nothing else in the
simulator decides which command is legal when: firmware.py looks it up here.
"""

from sevd.abi.commands import FirmwareCommand as C
from sevd.abi.commands import FirmwareGuestState as G
from sevd.abi.commands import PlatformState as P

ANY_PLATFORM = frozenset(P)
ANY_GUEST = frozenset(G) - {G.INVALID}

# command -> platform states in which it is legal; otherwise INVALID_PLATFORM_STATE.
# DF_FLUSH, PLATFORM_STATUS, GET_ID and SHUTDOWN are legal in every state.
PLATFORM_STATES: dict[C, frozenset[P]] = {
    C.INIT: frozenset({P.UNINIT}),
    C.SHUTDOWN: ANY_PLATFORM,
    C.PLATFORM_RESET: frozenset({P.UNINIT}),
    C.PLATFORM_STATUS: ANY_PLATFORM,
    C.PEK_GEN: frozenset({P.INIT}),
    C.PEK_CSR: frozenset({P.INIT, P.WORKING}),
    C.PEK_CERT_IMPORT: frozenset({P.INIT}),
    C.PDH_CERT_EXPORT: frozenset({P.INIT, P.WORKING}),
    C.PDH_GEN: frozenset({P.INIT, P.WORKING}),
    C.DF_FLUSH: ANY_PLATFORM,
    C.DOWNLOAD_FIRMWARE: frozenset({P.UNINIT}),
    C.GET_ID: ANY_PLATFORM,
    C.DECOMMISSION: frozenset({P.WORKING}),
    C.ACTIVATE: frozenset({P.WORKING}),
    C.DEACTIVATE: frozenset({P.WORKING}),
    C.GUEST_STATUS: frozenset({P.INIT, P.WORKING}),
    C.LAUNCH_START: frozenset({P.INIT, P.WORKING}),
    C.LAUNCH_UPDATE_DATA: frozenset({P.WORKING}),
    C.LAUNCH_UPDATE_VMSA: frozenset({P.WORKING}),
    C.LAUNCH_MEASURE: frozenset({P.WORKING}),
    C.LAUNCH_UPDATE_SECRET: frozenset({P.WORKING}),
    C.LAUNCH_FINISH: frozenset({P.WORKING}),
    C.SEND_START: frozenset({P.WORKING}),
    C.SEND_UPDATE_DATA: frozenset({P.WORKING}),
    C.SEND_UPDATE_VMSA: frozenset({P.WORKING}),
    C.SEND_FINISH: frozenset({P.WORKING}),
    C.SEND_CANCEL: frozenset({P.WORKING}),
    C.RECEIVE_START: frozenset({P.INIT, P.WORKING}),
    C.RECEIVE_UPDATE_DATA: frozenset({P.WORKING}),
    C.RECEIVE_UPDATE_VMSA: frozenset({P.WORKING}),
    C.RECEIVE_FINISH: frozenset({P.WORKING}),
    C.DBG_DECRYPT: frozenset({P.WORKING}),
    C.DBG_ENCRYPT: frozenset({P.WORKING}),
}

# command -> guest states in which it is legal; otherwise INVALID_GUEST_STATE.
# Absent: the command creates a guest (LAUNCH_START, RECEIVE_START) or does not check the state
# (GUEST_STATUS, DBG_*).
GUEST_STATES: dict[C, frozenset[G]] = {
    C.DECOMMISSION: ANY_GUEST,
    C.ACTIVATE: ANY_GUEST - {G.SENT},
    C.DEACTIVATE: ANY_GUEST,
    C.LAUNCH_UPDATE_DATA: frozenset({G.LUPDATE}),
    C.LAUNCH_UPDATE_VMSA: frozenset({G.LUPDATE}),
    C.LAUNCH_MEASURE: frozenset({G.LUPDATE}),
    C.LAUNCH_UPDATE_SECRET: frozenset({G.LSECRET}),
    C.LAUNCH_FINISH: frozenset({G.LSECRET}),
    C.SEND_START: frozenset({G.RUNNING}),
    C.SEND_UPDATE_DATA: frozenset({G.SUPDATE}),
    C.SEND_UPDATE_VMSA: frozenset({G.SUPDATE}),
    C.SEND_FINISH: frozenset({G.SUPDATE}),
    C.SEND_CANCEL: frozenset({G.SUPDATE}),
    C.RECEIVE_UPDATE_DATA: frozenset({G.RUPDATE}),
    C.RECEIVE_UPDATE_VMSA: frozenset({G.RUPDATE}),
    C.RECEIVE_FINISH: frozenset({G.RUPDATE}),
}

# command -> the guest state after success (absent: unchanged).
GUEST_NEXT: dict[C, G] = {
    C.LAUNCH_START: G.LUPDATE,
    C.LAUNCH_MEASURE: G.LSECRET,
    C.LAUNCH_FINISH: G.RUNNING,
    C.SEND_START: G.SUPDATE,
    C.SEND_FINISH: G.SENT,
    C.SEND_CANCEL: G.RUNNING,
    C.RECEIVE_START: G.RUPDATE,
    C.RECEIVE_FINISH: G.RUNNING,
}

# Migration is in the tables (so its state checks are exact) but answers UNSUPPORTED after them.
UNSUPPORTED = frozenset(
    {
        C.SEND_START,
        C.SEND_UPDATE_DATA,
        C.SEND_UPDATE_VMSA,
        C.SEND_FINISH,
        C.SEND_CANCEL,
        C.RECEIVE_START,
        C.RECEIVE_UPDATE_DATA,
        C.RECEIVE_UPDATE_VMSA,
        C.RECEIVE_FINISH,
        C.DOWNLOAD_FIRMWARE,
    }
)
