"""A router that decides with a built-in heuristic by name, on the same live state.

:class:`HeuristicRouter` has the interface of :class:`~prfaas_env.router.core.Router`
(``decide``, ``decide_many``, ``labels``, ``live``) but no bundle: it is built from a
topology and a policy name (any of :func:`prfaas_env.policies.policy_names`). States are
parsed by the same :class:`~prfaas_env.observation.live.LiveState` (one parser, one encoder), so a
heuristic sees exactly the view it sees in the simulator.

Decisions carry ``source="heuristic"``. A heuristic decides even when metrics are missing
(it then sees the parser's defaults in their place); the decision's ``reason`` lists what was
missing or invalid. When no action is allowed (every route crosses a link reported down) the
decision is action -1, label ``none``, as with the bundle router.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from prfaas_env.observation.live import LiveState
from prfaas_env.policies import Policy, make_policy
from prfaas_env.router.core import Decision
from prfaas_env.sim.costs import CostTables
from prfaas_env.sim.topology import Topology

__all__ = ["HeuristicRouter"]


class HeuristicRouter:
    """Routes live states with the built-in policy ``policy`` (see the module docstring).

    Args:
        topology: the deployment's topology.
        policy: a built-in policy name (``prfaas_threshold``, ``mooncake``, ``llm_d``, ...).
        params: the policy's parameters (as in a scenario's ``policies:`` section).
        expected_output_tokens: default for ``request.expected_output_tokens``, tokens.
        admission_control: whether the action list ends with ``reject``.
        tables: the topology's cost tables (built when not given).
        seed: seed of the policy's random generator (``random`` uses it).
    """

    def __init__(
        self,
        topology: Topology,
        policy: str,
        params: Mapping[str, Any] | None = None,
        expected_output_tokens: float = 1024.0,
        admission_control: bool = False,
        tables: CostTables | None = None,
        seed: int | None = 0,
    ) -> None:
        self.live = LiveState(topology, expected_output_tokens, admission_control, tables)
        self.labels = list(self.live.routes.labels)
        self.policy: Policy = make_policy(policy, self.live.routes, topology, **dict(params or {}))
        self.policy.reset(1, seed=seed)
        self.name = policy
        self.decide({"request": {"input_tokens": 1024}})  # compile / load the parser now

    def decide(self, state: Mapping[str, Any]) -> Decision:
        """Route one live state (LiveStateError when it has no usable input length)."""
        return self.decide_many([state])[0]

    def decide_many(self, states: Sequence[Mapping[str, Any]]) -> list[Decision]:
        """Route a batch of live states with one call of the policy."""
        parsed = self.live.parse(states)
        mask = parsed.mask
        allowed = mask.any(axis=1)
        actions = np.full(len(states), -1, np.int64)
        rows = np.flatnonzero(allowed)
        if rows.size:
            if rows.size == len(states):
                view = parsed.view
            else:
                view = {k: np.asarray(v)[rows] for k, v in parsed.view.items()}
            actions[rows] = self.policy.act(view, mask[rows])
        out = []
        for i, a in enumerate(actions.tolist()):
            reason = "; ".join(parsed.problems[i]) or None
            if a < 0 or not mask[i, a]:
                out.append(Decision(-1, "none", "heuristic", reason or "no allowed action"))
            else:
                out.append(Decision(a, self.labels[a], "heuristic", reason))
        return out

    def route_scores(self, state: Mapping[str, Any]) -> list[float] | None:
        """The policy's per-route costs for ``state`` (lower is better), or None for a
        policy that does not score routes (``random``, ``round_robin``, ...)."""
        try:
            return [float(x) for x in self.policy.scores(self.live.parse([state]).view)[0]]
        except NotImplementedError:
            return None
