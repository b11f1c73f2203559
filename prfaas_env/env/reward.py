"""The per-step reward: weighted terms, each a difference of the simulator's counters.

Every term is linear in the change of the counters the simulator keeps per env
(:data:`prfaas_env.sim.view.COUNTERS`) between two decisions, so one ``[counters, terms]``
matrix turns the change into the terms, and the weights turn the terms into the reward.

========== ================================================= ===================== ========
term       per step                                          unit                  default
========== ================================================= ===================== ========
slo        requests completed within both SLOs               requests              1.0
ttft       minus the summed TTFT of requests completed,      SLOs                  0.0
           over the TTFT SLO
waiting    minus the request-seconds spent waiting for a     SLOs                  0.0
           first token, over the TTFT SLO
throughput output tokens produced, in thousands              1000 tokens           0.0
reject     minus the requests turned away                    requests              1.0
========== ================================================= ===================== ========

``waiting`` integrates the number of routed requests without a first token from one decision
to the next. Summed over a run it equals the summed TTFT exactly (a test checks it), so it
optimises what ``ttft`` does, but pays out as the waiting happens rather than when requests
finish tens of decisions later: credit assignment is much easier (the device Decima, Mao et
al. SIGCOMM 2019, uses for job completion time).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from prfaas_env.sim.jit import compiled
from prfaas_env.sim.view import COUNTERS

# term -> (counter it reads, sign, divisor: "slo" for the TTFT SLO, or a number)
_TERMS: dict[str, tuple[str, float, str | float]] = {
    "slo": ("slo_met", 1.0, 1.0),
    "ttft": ("ttft_sum_s", -1.0, "slo"),
    "waiting": ("waiting_s", -1.0, "slo"),
    "throughput": ("output_tokens", 1.0, 1000.0),
    "reject": ("rejected", -1.0, 1.0),
}
REWARD_TERMS = tuple(_TERMS)
DEFAULT_WEIGHTS: dict[str, float] = {
    "slo": 1.0,
    "ttft": 0.0,
    "waiting": 0.0,
    "throughput": 0.0,
    "reject": 1.0,
}


class Reward:
    """The reward of one scenario: its TTFT SLO (s) and the term weights.

    :meth:`terms` maps the change of the counters ``[env, len(COUNTERS)]`` to the unweighted
    terms ``[env, len(REWARD_TERMS)]``; :meth:`total` weighs and sums them, term by term in
    :data:`REWARD_TERMS` order. The environment's step does both, and its episode
    bookkeeping, in one compiled call (:func:`account`).
    """

    def __init__(self, ttft_slo_s: float, weights: dict[str, float]) -> None:
        unknown = set(weights) - set(REWARD_TERMS)
        if unknown:
            raise ValueError(
                f"reward weights: unknown term(s) {', '.join(sorted(unknown))}; allowed: "
                f"{', '.join(REWARD_TERMS)}"
            )
        self.weights = {k: float(weights.get(k, 0.0)) for k in REWARD_TERMS}
        self.cols = np.array([COUNTERS.index(c) for c, _, _ in _TERMS.values()], np.int64)
        self.sign = np.array([s for _, s, _ in _TERMS.values()])
        self.div = np.array([ttft_slo_s if d == "slo" else float(d) for _, _, d in _TERMS.values()])
        self.w = np.array([self.weights[k] for k in REWARD_TERMS])

    def terms(self, delta: NDArray[np.float64]) -> NDArray[np.float64]:
        """``[env, term]`` unweighted terms of a change of the counters."""
        return delta[:, self.cols] * self.sign / self.div

    def total(self, terms: NDArray[np.float64]) -> NDArray[np.float64]:
        """``[env]`` weighted sum of ``terms``."""
        out = terms[:, 0] * self.w[0]
        for j in range(1, len(self.w)):
            out += terms[:, j] * self.w[j]
        return out


@compiled
def account(
    counters: NDArray[np.float64],
    last: NDArray[np.float64],
    steps: NDArray[np.int64],
    resetting: NDArray[np.bool_],
    now: NDArray[np.float64],
    cols: NDArray[np.int64],
    sign: NDArray[np.float64],
    div: NDArray[np.float64],
    w: NDArray[np.float64],
    max_decisions: int,
    max_seconds: float,
    terms: NDArray[np.float64],
    reward: NDArray[np.float64],
    truncated: NDArray[np.bool_],
) -> int:
    """One step's bookkeeping for every env, in place: the env's decision count, its reward
    terms and reward (as :meth:`Reward.terms` and :meth:`Reward.total` compute them, to the
    last bit), the counters remembered for the next step, and whether its episode is
    truncated (``max_decisions`` decisions, or ``max_seconds`` simulated seconds; -1 and inf
    for none). Envs in ``resetting`` were not stepped: reward 0, not truncated. Returns the
    number of envs truncated."""
    done = 0
    for e in range(counters.shape[0]):
        if resetting[e]:
            for j in range(terms.shape[1]):
                terms[e, j] = 0.0
            reward[e] = 0.0
            truncated[e] = False
            continue
        steps[e] += 1
        r = 0.0
        for j in range(terms.shape[1]):
            c = cols[j]
            t = (counters[e, c] - last[e, c]) * sign[j] / div[j]
            terms[e, j] = t
            r = t * w[j] if j == 0 else r + t * w[j]
        reward[e] = r
        for c in range(counters.shape[1]):
            last[e, c] = counters[e, c]
        cut = (max_decisions >= 0 and steps[e] >= max_decisions) or now[e] >= max_seconds
        truncated[e] = cut
        if cut:
            done += 1
    return done
