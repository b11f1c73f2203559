"""The observation path against plain NumPy references: the simulator's view (written inside
the compiled step) against the raw state read with NumPy, the compiled derivations against the
formulas written out, and the normalisation against the feature table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from prfaas_env.env.config import resolve_config
from prfaas_env.observation.derive import derive, derive_params
from prfaas_env.observation.encoder import OBS_HIGH, ObservationEncoder
from prfaas_env.observation.simulated import SimObserver
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


def reference_view(sim: VecSimulator, staleness_s: float = 0.0) -> dict[str, np.ndarray]:
    """The router's view read straight from the simulator's packed state with NumPy (the
    reference the compiled view, prfaas_env.sim.view, must equal); derived entries filled by
    the compiled derivation, as the environment computed them before the view moved into
    the step."""
    st, S, topo = sim.state, sim.static, sim.scenario.topology
    now = st.now
    n = sim.num_envs
    length = sim.workload_state.req_in.astype(float)
    view: dict[str, np.ndarray] = {
        "input_tokens": length,
        "expected_output_tokens": np.full(n, sim.scenario.workload.mean_output_tokens()),
    }
    pcl = list(topo.prefill_index)
    wait = np.maximum(st.p_free - now[:, None], 0.0)
    cols: dict[str, list[np.ndarray]] = {}
    for c in pcl:
        if S.cl_nc[c]:  # co-located engines (docs of prfaas_env.sim.view)
            ranks = slice(S.cl_r0[c], S.cl_r0[c] + S.cl_nc[c] * S.cl_ranks[c])
            engines = slice(S.cl_c0[c], S.cl_c0[c] + S.cl_nc[c])
            end = st.k_end[:, engines]
            cols.setdefault("queued_requests", []).append(st.k_nq[:, ranks].sum(1).astype(float))
            cols.setdefault("queued_tokens", []).append(st.k_qtok[:, ranks].sum(1).astype(float))
            to_end = np.where(np.isfinite(end), np.maximum(end - now[:, None], 0.0), 0.0)
            cols.setdefault("wait_s", []).append(to_end.min(1))
            cols.setdefault("busy_fraction", []).append(np.isfinite(end).mean(1))
            continue
        sl = slice(S.cl_p0[c], S.cl_p0[c] + S.cl_np[c])
        cols.setdefault("queued_requests", []).append(st.p_nq[:, sl].sum(1).astype(float))
        cols.setdefault("queued_tokens", []).append(st.p_qtok[:, sl].sum(1))
        cols.setdefault("wait_s", []).append(wait[:, sl].min(1))
        cols.setdefault("busy_fraction", []).append((wait[:, sl] > 0).mean(1))
    view["cached_tokens"] = st.obs_cached[:, pcl].astype(float)
    view["prefill_s"] = st.obs_prefill_s[:, pcl].copy()
    used = list(topo.route_channels)
    flows = st.l_n.astype(float)
    v_now = st.l_v + np.where(
        flows > 0, (now[:, None] - st.l_t) * st.l_bw / np.maximum(flows, 1), 0
    )
    left = np.maximum(st.l_sum_tag - flows * v_now, 0.0)
    if staleness_s > 0:
        t = np.floor(now / staleness_s) * staleness_s
        step = S.ch_step_s[None, :]
        finite = np.isfinite(step)
        cells = np.where(finite, np.floor(t[:, None] / np.where(finite, step, 1.0)), 0)
        idx = cells.astype(np.int64) % S.ch_cells[None, :]
        measured = np.take_along_axis(st.l_series, idx[:, :, None], axis=2)[:, :, 0]
    else:
        measured = st.l_bw.copy()
    bandwidth_bps = measured[:, used]
    view["bytes_in_flight"] = left[:, used]
    view["flows"] = flows[:, used]
    for c in topo.decode_index:
        if S.cl_nc[c]:
            ranks = slice(S.cl_r0[c], S.cl_r0[c] + S.cl_nc[c] * S.cl_ranks[c])
            engines = slice(S.cl_c0[c], S.cl_c0[c] + S.cl_nc[c])
            seqs, blocks = S.cl_max_seqs[c], S.cl_kv_blocks[c]
            run, free, wl_ = st.k_nrun[:, ranks], st.k_free[:, ranks], st.k_w_len[:, ranks]
            nr = run.shape[1]
            cols.setdefault("free_slots", []).append((seqs - run).sum(1) / (seqs * nr))
            cols.setdefault("kv_used", []).append((blocks - free).sum(1) / (blocks * nr))
            queue = (wl_ - st.k_nq[:, ranks]).sum(1)
            cols.setdefault("admission_queue", []).append(queue.astype(float))
            room = (run + wl_ < seqs).any(1)
            soonest = np.maximum(st.k_end[:, engines].min(1) - now, 0.0)
            cols.setdefault("admission_wait_s", []).append(
                np.where(room, 0.0, np.minimum(soonest, 1e6))
            )
            continue
        sl = slice(S.cl_d0[c], S.cl_d0[c] + S.cl_nd[c])
        mb = S.cl_max_batch[c]
        nd = st.d_n[:, sl]
        cols.setdefault("free_slots", []).append((mb - nd).sum(1) / (mb * nd.shape[1]))
        cols.setdefault("kv_used", []).append(
            st.d_mem[:, sl].sum(1) / (S.cl_kv_cap[c] * nd.shape[1])
        )
        cols.setdefault("admission_queue", []).append(st.q_len[:, c].astype(float))
        has_slot = (nd < mb).any(1) & (st.q_len[:, c] == 0)
        soonest = np.maximum(st.d_next_t[:, sl].min(1) - now, 0.0)
        cols.setdefault("admission_wait_s", []).append(
            np.where(has_slot, 0.0, np.minimum(soonest, 1e6))
        )
    for k, v in cols.items():
        view[k] = np.stack(v, axis=1)
    view["uncached_tokens"] = np.empty((n, len(pcl)))
    view["bandwidth"] = np.empty((n, len(used)))
    view["transfer_s"] = np.empty((n, len(used)))
    view["estimated_ttft_s"] = np.empty((n, len(topo.routes)))
    derive(
        derive_params(topo, sim.tables),
        length,
        view["cached_tokens"],
        view["wait_s"],
        bandwidth_bps,
        view["flows"],
        view["uncached_tokens"],
        view["prefill_s"],
        view["bandwidth"],
        view["transfer_s"],
        view["estimated_ttft_s"],
        False,
    )
    view["ttft_ewma_s"] = np.nan_to_num(st.m_ttft_ewma, nan=0.0)
    return view


@pytest.mark.parametrize(
    ("name", "staleness_s"), [(n, 0.0) for n in sorted(SCENARIOS)] + [("starved", 7.5)]
)
def test_the_simulators_view_equals_its_state_read_with_numpy(
    name: str, staleness_s: float
) -> None:
    """Differential: the view the step writes (and the observation finished from it) equals
    the one read from the raw state with NumPy, over 300 decisions with resets; the mask is
    the live-bandwidth rule."""
    sc = parse_scenario(SCENARIOS[name](), name)
    sim = VecSimulator(sc, 4)
    topo = sc.topology
    routes = RouteTable.from_topology(topo)
    observer = SimObserver(sim, routes.num_actions, staleness_s)
    sim.reset(seed=3)
    policy = make_policy("mooncake", routes, topo)
    for step in range(300):
        obs = observer.observe()
        got = observer.view()
        want = reference_view(sim, staleness_s)
        for key, value in want.items():
            np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg=key)
        np.testing.assert_array_equal(obs, observer.encoder.encode(want))
        np.testing.assert_array_equal(observer.mask, sim.route_mask())
        sim.step(policy.act(got, observer.mask))
        if step == 150:
            sim.reset(seed=[11, 0, 0, 12], mask=np.array([True, False, False, True]))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_derived_view_entries_match_the_numpy_formulas(name: str) -> None:
    """Differential: the compiled derivation equals the written-out formulas on simulator
    views, including a link that goes down (the starved scenario's outage)."""
    sc = parse_scenario(SCENARIOS[name](), name)
    sim = VecSimulator(sc, 4)
    topo = sc.topology
    routes = RouteTable.from_topology(topo)
    observer = SimObserver(sim, routes.num_actions)
    sim.reset(seed=3)
    policy = make_policy("mooncake", routes, topo)
    down = 0
    for _ in range(300):
        view = observer.observe_view()
        ref = reference_derived(view, topo)
        for key, want in ref.items():  # bandwidth is carried as a fraction: an ulp or so
            np.testing.assert_allclose(view[key], want, rtol=1e-12, atol=0, err_msg=key)
        down += int((view["bandwidth"] == 0).sum())
        sim.step(policy.act(view, observer.mask))
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
