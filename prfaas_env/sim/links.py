"""Processor sharing on a link channel: the one formula for how far its flows have been served.

Every active KV transfer on a channel gets an equal share of the channel's usable bandwidth.
The channel keeps ``V``, the bytes each flow has been served since the channel was last idle,
as of time ``T``; a flow with finish tag ``tag`` (its ``V`` at arrival plus its bytes) is done
when ``V`` reaches ``tag``. The event loop (:mod:`prfaas_env.sim.kernel`) advances ``V`` with
:func:`served`, and the router's view (:mod:`prfaas_env.sim.view`) reads the bytes still in
flight with it, so the two cannot disagree.
"""

from __future__ import annotations

import numpy as np

from prfaas_env.sim.jit import compiled
from prfaas_env.sim.state import LF, LI


@compiled
def served(lf: np.ndarray, li: np.ndarray, e: int, ch: int, t: float) -> float:
    """Bytes each flow of channel ``ch`` of env ``e`` has been served by time ``t`` (s):
    ``V + (t - T) * bandwidth / flows`` while flows are active, ``V`` otherwise."""
    v = lf[e, ch, LF.V]
    dt = t - lf[e, ch, LF.T]
    if dt > 0.0 and li[e, ch, LI.N] > 0:
        v += dt * lf[e, ch, LF.BW] / li[e, ch, LI.N]
    return v


@compiled
def bytes_in_flight(lf: np.ndarray, li: np.ndarray, e: int, ch: int, t: float) -> float:
    """KV bytes channel ``ch`` of env ``e`` still has to send at time ``t`` (s): the active
    flows' finish tags minus what each has been served."""
    return max(lf[e, ch, LF.SUM_TAG] - li[e, ch, LI.N] * served(lf, li, e, ch, t), 0.0)
