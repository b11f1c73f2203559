"""The PrfaaS paper's steady-state throughput model (arXiv 2604.15039, section 3.4).

With ``L`` the uncached prompt length, ``t`` the offload threshold, ``p = P(L > t)``,
``l_long = E[L | L > t]`` and ``l_short = E[L | L <= t]``, the three paths sustain

- remote prefill: ``min(N_prfaas / T_prfaas(l_long), B_out / S_kv(l_long))`` requests/s,
- local prefill: ``N_p / T_pd(l_short)``,
- decode: ``N_d * BS_max / (T_decode * L_out)``, ``BS_max`` the largest batch that fits and
  keeps the TPOT SLO,

and the system sustains ``Lambda_max = min(Theta_prfaas / p, Theta_pdp / (1 - p), Theta_pdd)``.
``t`` (and the prefill/decode split of the PD cluster when it may change) is chosen by grid
search. Prefill times, KV sizes and decode step times come from the same cost models the
simulator tabulates. As in the paper, a path's time is evaluated at its mean length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from prfaas_env.costmodel import CostModel
from prfaas_env.errors import NotApplicableError
from prfaas_env.sim.bandwidth import GBPS
from prfaas_env.sim.topology import Topology


@dataclass(frozen=True)
class Capacities:
    """Per-path capacities (requests/s) at one threshold and split."""

    threshold_tokens: float
    offload_probability: float
    l_long: float
    l_short: float
    theta_prfaas: float
    theta_pdp: float
    theta_pdd: float
    lambda_max: float
    prefill_instances: int
    decode_instances: int


@dataclass(frozen=True)
class PaperSystem:
    """The quantities of the model for a topology of one prefill-only cluster (optional) and
    one PD cluster."""

    remote: CostModel | None
    local: CostModel
    n_prfaas: int
    n_pd_total: int
    n_p: int
    n_d: int
    bandwidth_bps: float  # bytes/s available to KV egress
    max_batch: int
    kv_capacity_bytes: float
    tpot_slo_s: float = float("inf")  # decode step-time limit (the TPOT SLO)

    @classmethod
    def from_topology(
        cls, topo: Topology, bandwidth_fraction: float = 1.0, tpot_slo_s: float = float("inf")
    ) -> PaperSystem:
        """The model's inputs from ``topo`` (NotApplicableError if it is not of the paper's
        shape)."""
        pd = [c for c in topo.clusters if c.role == "pd"]
        pre = [c for c in topo.clusters if c.role == "prefill"]
        if len(pd) != 1 or len(pre) > 1:
            raise NotApplicableError(
                f"{topo.source}: the analytic model needs one PD cluster and at most one "
                f"prefill-only cluster; this topology has {len(pd)} and {len(pre)}"
            )
        p = pd[0]
        models = dict(zip([c.name for c in topo.clusters], topo.cost_models(), strict=True))
        bw = 0.0
        if pre:
            ch = topo.channel_index(pre[0].datacenter, p.datacenter)
            if ch >= 0:
                link = topo.links[topo.channels[ch][0]]
                bw = link.bandwidth_gbps * GBPS * bandwidth_fraction
        cap = float(topo.decode_kv_capacity_bytes()[topo.cluster_index(p.name)])
        return cls(
            remote=models[pre[0].name] if pre else None,
            local=models[p.name],
            n_prfaas=pre[0].prefill_instances if pre else 0,
            n_pd_total=p.prefill_instances + p.decode_instances,
            n_p=p.prefill_instances,
            n_d=p.decode_instances,
            bandwidth_bps=bw,
            max_batch=p.max_batch,
            kv_capacity_bytes=cap,
            tpot_slo_s=tpot_slo_s,
        )


def capacities(
    system: PaperSystem,
    lengths: NDArray[np.float64],
    output_tokens: float,
    threshold: float,
    n_p: int | None = None,
) -> Capacities:
    """Path capacities at ``threshold`` for uncached prompt lengths sampled in ``lengths``."""
    n_p = system.n_p if n_p is None else n_p
    n_d = system.n_pd_total - n_p if n_p != system.n_p else system.n_d
    lengths = np.asarray(lengths, float)
    long_ = lengths > threshold if system.remote is not None else np.zeros(lengths.size, bool)
    p = float(long_.mean())
    l_long = float(lengths[long_].mean()) if long_.any() else 0.0
    l_short = float(lengths[~long_].mean()) if (~long_).any() else 0.0
    inf = float("inf")
    theta_prfaas = inf
    if p > 0 and system.remote is not None:
        t_long = float(system.remote.prefill_time_continuous_s(l_long, 0.0))
        kv = float(system.remote.kv_bytes(round(l_long)))
        by_link = system.bandwidth_bps / kv if system.bandwidth_bps > 0 else 0.0
        theta_prfaas = min(system.n_prfaas / t_long, by_link)
    theta_pdp = inf
    if p < 1:
        theta_pdp = n_p / float(system.local.prefill_time_continuous_s(l_short, 0.0)) if n_p else 0
    context = float(lengths.mean()) + output_tokens / 2.0
    batch, step = decode_batch(system, context)
    theta_pdd = n_d * batch / (step * output_tokens) if n_d else 0.0
    lam = min(
        theta_prfaas / p if p > 0 else inf,
        theta_pdp / (1 - p) if p < 1 else inf,
        theta_pdd,
    )
    return Capacities(
        threshold_tokens=float(threshold),
        offload_probability=p,
        l_long=l_long,
        l_short=l_short,
        theta_prfaas=theta_prfaas,
        theta_pdp=theta_pdp,
        theta_pdd=theta_pdd,
        lambda_max=lam,
        prefill_instances=n_p,
        decode_instances=n_d,
    )


def decode_batch(system: PaperSystem, context_tokens: float) -> tuple[int, float]:
    """``(BS_max, step time s)``: the largest decode batch that fits the slots and KV memory
    and whose step time keeps the TPOT SLO (at least 1), at ``context_tokens`` per sequence."""
    per_seq = float(system.local.kv_bytes(round(context_tokens)))
    cap = int(max(1, min(system.max_batch, system.kv_capacity_bytes // per_seq)))
    b = np.arange(1, cap + 1, dtype=float)
    steps = system.local.decode_step_time_continuous_s(b, b * context_tokens)
    ok = np.flatnonzero(steps <= system.tpot_slo_s)
    i = int(ok[-1]) if ok.size else 0
    return i + 1, float(steps[i])


def optimise(
    system: PaperSystem,
    lengths: NDArray[np.float64],
    output_tokens: float,
    *,
    split: bool = False,
    grid: int = 64,
) -> Capacities:
    """The threshold (and, with ``split``, the PD prefill/decode split) maximising
    ``Lambda_max``, by grid search over length quantiles (ties: the larger threshold)."""
    lengths = np.asarray(lengths, float)
    cands = np.unique(np.quantile(lengths, np.linspace(0.0, 1.0, grid)))
    cands = np.concatenate([[0.0], cands])
    splits = range(1, system.n_pd_total) if split else [system.n_p]
    best: Capacities | None = None
    for n_p in splits:
        for t in cands:
            c = capacities(system, lengths, output_tokens, float(t), n_p)
            if best is None or c.lambda_max >= best.lambda_max:
                best = c
    assert best is not None
    return best
