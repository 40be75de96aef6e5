"""TCP connection states, as seen from the packets of both directions.

Only packets carrying SYN, FIN or RST, or arriving before the handshake completed, reach
``step``: the table skips it for plain ACK/data segments of an established flow, which keeps
it off the hot path. ``fins`` is a bit set of the directions that sent a FIN
(``FIN_OUT`` initiator, ``FIN_IN`` responder).
"""

from __future__ import annotations

from shared.records import TH_ACK, TH_FIN, TH_RST, TH_SYN

SYN_SENT = "syn_sent"  # initiator's SYN seen, no SYN+ACK yet
SYN_RECEIVED = "syn_received"  # SYN+ACK seen, the initiator's final ACK not yet
ESTABLISHED = "established"  # handshake done, or picked up mid-stream
FIN_WAIT = "fin_wait"  # a FIN from one direction
CLOSED = "closed"  # FINs from both directions
RESET = "reset"  # an RST from either direction

STATES = (SYN_SENT, SYN_RECEIVED, ESTABLISHED, FIN_WAIT, CLOSED, RESET)
HANDSHAKE = frozenset((SYN_SENT, SYN_RECEIVED))
FINISHED = frozenset((CLOSED, RESET))

FIN_OUT, FIN_IN = 1, 2


def initial(flags: int) -> tuple[str, bool, int]:
    """State of a flow from its first packet: (state, sender is the initiator, fins).

    A first packet that is a SYN+ACK was answered by its sender: the initiator is its receiver.
    """
    if flags & TH_RST:
        return RESET, True, 0
    if flags & TH_SYN:
        if flags & TH_ACK:
            return SYN_RECEIVED, False, 0
        return SYN_SENT, True, 0
    if flags & TH_FIN:
        return FIN_WAIT, True, FIN_OUT
    return ESTABLISHED, True, 0


def step(state: str, fins: int, flags: int, from_initiator: bool) -> tuple[str, int]:
    """The state after one more packet of the flow."""
    if state is RESET or state is CLOSED:
        return state, fins  # stragglers during the linger do not reopen the flow
    if flags & TH_RST:
        return RESET, fins
    if flags & TH_FIN:
        fins |= FIN_OUT if from_initiator else FIN_IN
        return (CLOSED if fins == FIN_OUT | FIN_IN else FIN_WAIT), fins
    if state is SYN_SENT:
        if flags & TH_SYN:
            if flags & TH_ACK and not from_initiator:
                return SYN_RECEIVED, fins
            return state, fins  # a retransmitted SYN
        if flags & TH_ACK:
            return ESTABLISHED, fins  # the SYN+ACK was not captured
        return state, fins
    if state is SYN_RECEIVED:
        if flags & TH_ACK and not flags & TH_SYN and from_initiator:
            return ESTABLISHED, fins
        return state, fins
    return state, fins


def is_new_connection(state: str, flags: int) -> bool:
    """A bare SYN on a finished flow's 5-tuple: the port was reused for a new connection."""
    return (state is CLOSED or state is RESET) and flags & (TH_SYN | TH_ACK) == TH_SYN


# The compiled twin (Cython, built by scripts/setup from this very file) takes over these names
# unless PKTSCOPE_PURE=1; this file stays the reference (shared/compiled.py).
from shared.compiled import adopt as _adopt  # noqa: E402

COMPILED = _adopt(globals(), ("initial", "step", "is_new_connection"))
