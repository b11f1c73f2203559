"""Recorded decisions: the views and masks a policy saw while routing, with its actions.

Parity checks, golden files and knob distillation all need real router inputs, not random
vectors: :func:`record` runs a policy on a scenario through
:func:`~prfaas_env.evaluation.run_policy` (the evaluation path) and keeps every view.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env.evaluation import Run, run_policy
from prfaas_env.observation.live import LiveState
from prfaas_env.policies import Policy, View
from prfaas_env.sim.scenario import Scenario


@dataclass(frozen=True)
class Recording:
    """``view`` arrays stacked over decisions (leading dimension = decision; row order:
    decision step, then seed), the full action mask and the recorded policy's actions."""

    view: dict[str, NDArray[np.float64]]
    mask: NDArray[np.bool_]
    actions: NDArray[np.int64]
    run: Run

    def __len__(self) -> int:
        return len(self.actions)


class _Recorder(Policy):
    def __init__(self, inner: Policy, live: LiveState) -> None:
        super().__init__(inner.routes, inner.topology)
        self.inner = inner
        self.live = live
        self.name = inner.name
        self.views: list[View] = []
        self.masks: list[NDArray[np.bool_]] = []
        self.actions: list[NDArray[np.int64]] = []

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        self.inner.reset(num_envs, seed)

    def act(self, view: View, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        full = self.live.mask(view)  # the environment's mask, with reject when present
        a = np.asarray(self.inner.act(view, full), np.int64)
        self.views.append({k: np.array(v, dtype=np.float64) for k, v in view.items()})
        self.masks.append(full)
        self.actions.append(a)
        return a


def record(
    scenario: Scenario,
    policy: Policy,
    live: LiveState,
    seeds: Sequence[int],
    decisions: int,
    staleness_s: float = 0.0,
) -> Recording:
    """Run ``policy`` for ``decisions`` steps on each of ``seeds`` and keep what it saw."""
    rec = _Recorder(policy, live)
    run = run_policy(
        scenario, lambda _sc: rec, policy.name, list(seeds), decisions, staleness_s=staleness_s
    )
    view = {k: np.concatenate([v[k] for v in rec.views]) for k in rec.views[0]}
    return Recording(view, np.concatenate(rec.masks), np.concatenate(rec.actions), run)


@contextlib.contextmanager
def folder_in_place(out: Path) -> Iterator[Path]:
    """A sibling work folder to write a bundle into; it replaces ``out`` only when the block
    completes (an error removes it and leaves ``out`` as it was)."""
    work = out.with_name(f".{out.name}.partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)


def portable_topology(raw: dict[str, Any]) -> dict[str, Any]:
    """The topology mapping without link bandwidth processes and outages (a router measures
    bandwidth itself; a replayed CSV would also tie the bundle to a file)."""
    out = json.loads(json.dumps(raw))
    for link in out.get("links") or []:
        if isinstance(link, dict):
            link.pop("bandwidth", None)
            link.pop("outages", None)
    return out


def score_margin(scores: NDArray[np.float64], mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Per decision, the gap between the best and the second-best allowed score (in the
    scores' units): inf with one allowed action, 0 with none (there is nothing to agree
    on). Parity checks and golden files keep the decisions whose margin exceeds a tie."""
    s = np.sort(np.where(mask, scores, -np.inf), axis=1)
    best = s[:, -1]
    second = s[:, -2] if s.shape[1] > 1 else np.full(len(s), -np.inf)
    with np.errstate(invalid="ignore"):  # -inf - -inf where nothing is allowed
        gap = best - second  # inf where one action is allowed
    return np.where(best == -np.inf, 0.0, gap)
