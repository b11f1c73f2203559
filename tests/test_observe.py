"""The compiled observation parts (prfaas_env.sim.observe) against plain NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from prfaas_env.env.config import resolve_config
from prfaas_env.env.features import OBS_HIGH, ObservationEncoder, view_from_sim
from prfaas_env.policies import RouteTable, make_policy
from prfaas_env.sim.bandwidth import GBPS
from prfaas_env.sim.engine import VecSimulator
from prfaas_env.sim.scenario import parse_scenario
from prfaas_env.sim.topology import Topology
from tests.sim_scenarios import SCENARIOS

PAPER = resolve_config("paper_prfaas")[0].topology
MULTI = resolve_config("multi_region")[0].topology


def reference_derived(view: dict, topo: Topology) -> dict[str, np.ndarray]:
    """The derived view entries written out in NumPy, formula by formula (features.DERIVED)."""
    length = np.asarray(view["input_tokens"], float)
    cached = np.minimum(view["cached_tokens"], length[:, None] - 1)
    used = list(topo.route_channels)
    nominal = np.array([topo.links[topo.channels[c][0]].bandwidth_gbps * GBPS for c in used])
    latency = np.array([topo.channel_latency_s(c) for c in used])
    bw_bps = view["bandwidth"] * nominal
    share = bw_bps / (view["flows"] + 1.0)
    kv = topo.model.kv_bytes_for(length)[:, None]
    transfer = np.where(share > 0, kv / np.maximum(share, 1e-9), 1e6) + latency
    pcl = list(topo.prefill_index)
    est = []
    for r in topo.routes:
        p = pcl.index(r.prefill)
        e = view["wait_s"][:, p] + view["prefill_s"][:, p]
        if r.channel >= 0:
            e = e + transfer[:, used.index(r.channel)]
        est.append(e)
    return {
        "uncached_tokens": length[:, None] - cached,
        "transfer_s": transfer,
        "estimated_ttft_s": np.stack(est, axis=1),
    }


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_derived_view_entries_match_the_numpy_formulas(name: str) -> None:
    """Differential: the compiled derivation equals the written-out formulas on simulator
    views, including a link that goes down (the starved scenario's outage)."""
    sc = parse_scenario(SCENARIOS[name](), name)
    sim = VecSimulator(sc, 4)
    sim.reset(seed=3)
    topo = sc.topology
    policy = make_policy("mooncake", RouteTable.from_topology(topo), topo)
    down = 0
    for _ in range(300):
        view = view_from_sim(sim)
        ref = reference_derived(view, topo)
        for key, want in ref.items():  # bandwidth is carried as a fraction: an ulp or so
            np.testing.assert_allclose(view[key], want, rtol=1e-12, atol=0, err_msg=key)
        down += int((view["bandwidth"] == 0).sum())
        sim.step(policy.act(view, sim.route_mask()))
    if name == "starved":
        assert down > 0  # the outage was observed, so the link-down branch ran


def reference_normalise(enc: ObservationEncoder, values: np.ndarray) -> np.ndarray:
    """The encoder's normalisation in NumPy, column by column from its feature table."""
    out = np.empty(values.shape)
    for j, f in enumerate(enc.features()):
        x = values[:, j]
        if f.normalisation != "none":
            divisor = 1e9 if "1e9" in f.normalisation else 1.0
            top = float(f.normalisation.rsplit("log1p(", 1)[1].rstrip(")"))
            x = np.log1p(np.maximum(x, 0.0) / divisor) / np.log1p(top)
        out[:, j] = x
    return np.minimum(np.fmax(out, 0.0), OBS_HIGH).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_normalise_matches_the_feature_table(data: st.DataObject) -> None:
    """Property: any values, NaN and infinities included, normalise as the feature table
    says (log1p differs between libm and NumPy by at most an ulp), finite and in range."""
    enc = ObservationEncoder(MULTI)
    rows = data.draw(st.integers(1, 5))
    values = data.draw(
        arrays(
            np.float64,
            (rows, enc.size),
            elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
        )
    )
    got = enc.normalise(values)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert (got >= 0).all() and (got <= OBS_HIGH).all()
    np.testing.assert_array_max_ulp(got, reference_normalise(enc, values), maxulp=1)


def test_normalise_refuses_values_of_the_wrong_shape() -> None:
    enc = ObservationEncoder(PAPER)
    with pytest.raises(ValueError, match=rf"shape \[n, {enc.size}\]"):
        enc.normalise(np.zeros((2, enc.size + 1)))
    with pytest.raises(ValueError, match="float64"):
        enc.normalise(np.zeros((2, enc.size), np.float32))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_mask_allows_what_the_rule_says(data: st.DataObject) -> None:
    """Property: a route is allowed unless its channel's measured bandwidth is 0; routes
    inside a datacenter and reject always are."""
    admission = data.draw(st.booleans())
    routes = RouteTable.from_topology(MULTI, admission)
    n = data.draw(st.integers(0, 6))
    nch = len(MULTI.route_channels)
    bw = data.draw(arrays(np.float64, (n, nch), elements=st.sampled_from([0.0, 0.3, 1.0])))
    got = routes.allowed({"bandwidth": bw})
    assert got.shape == (n, routes.num_actions)
    for a in range(routes.num_actions):
        if a < routes.num_routes and routes.channel[a] >= 0:
            np.testing.assert_array_equal(got[:, a], bw[:, routes.channel[a]] > 0)
        else:
            assert got[:, a].all()
