"""The fast engine against the reference simulator, determinism, and system invariants."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas_env.observation.simulated import SimObserver
from prfaas_env.sim.costs import prefill_time
from prfaas_env.sim.engine import VecSimulator
from prfaas_env.sim.lookahead import PREFETCH_AHEAD
from prfaas_env.sim.reference import ReferenceSimulator
from prfaas_env.sim.scenario import parse_scenario
from prfaas_env.sim.state import EI, RECORD_FIELDS, REJECT, STATE_LAYOUT
from prfaas_env.sim.view import COUNTERS
from tests.sim_scenarios import SCENARIOS, saturated, scenario, starved


def _random_routes(n: int, routes: int, seed: int) -> list[int]:
    return [int(r) for r in np.random.default_rng(seed).integers(routes, size=n)]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fast_engine_matches_reference(name: str) -> None:
    """Same seed, same decisions: every field of every request record agrees."""
    sc = scenario(name)
    n = 250
    vec = VecSimulator(sc, 1, record=n)
    vec.reset(seed=11)
    ref = ReferenceSimulator(sc, 11)
    clusters = len(sc.topology.clusters)
    for r in _random_routes(n, vec.num_routes, 5):
        assert list(vec.state.obs_cached[0]) == [ref.cached_tokens(c) for c in range(clusters)]
        vec.step(np.array([r]))
        ref.step(r)
        left = vec.state.l_sum_tag[0] - vec.state.l_n[0] * vec.state.l_v[0]  # bytes in flight
        ref_left = [sum(f.remaining for f in c.flows) for c in ref.channels]
        np.testing.assert_allclose(left, ref_left, rtol=1e-9, atol=1e-3)
    vec.drain()
    ref.drain()
    fast, slow = vec.records(0), ref.records()
    for f in RECORD_FIELDS:
        np.testing.assert_allclose(fast[f], slow[f], rtol=1e-9, atol=1e-9, err_msg=f)
    ttft = fast["first_token_s"] - fast["arrival_s"]
    assert np.isfinite(ttft).all() and len(ttft) == n


def test_differential_scenarios_exercise_their_mechanisms() -> None:
    """The scenarios above really queue, hit and evict caches, wait for slots, lose the link."""
    sim = VecSimulator(scenario("saturated"), 1, record=400)
    sim.reset(seed=11)
    for r in _random_routes(400, sim.num_routes, 5):
        sim.step(np.array([r]))
    sim.drain()
    rec = sim.records(0)
    assert (rec["cached_tokens"] > 0).mean() > 0.2
    assert (rec["decode_start_s"] > rec["transfer_end_s"] + 1e-9).mean() > 0.05
    assert (rec["prefill_start_s"] > rec["arrival_s"] + 1e-9).mean() > 0.05
    assert sim.cache.size[0].max() == 300  # the local cache filled up and evicted
    sim = VecSimulator(scenario("starved"), 1, record=200)
    sim.reset(seed=11)
    for r in _random_routes(200, sim.num_routes, 5):
        sim.step(np.array([r]))
    assert sim.state.l_series[0, 0, 50:70].max() == 0.0  # the outage
    assert sim.state.l_series[0, 0, :50].std() > 0  # the fluctuation


def _run(sim: VecSimulator, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        sim.step(rng.integers(sim.num_routes, size=sim.num_envs))


def test_same_seed_same_results_and_batch_equals_standalone() -> None:
    # enough envs that the kernel's prefetching of envs ahead runs, serial and threaded
    sc = scenario("starved")
    n = 2 * PREFETCH_AHEAD * max(numba.get_num_threads(), 2) + 8
    batch = VecSimulator(sc, n, record=150)
    batch.reset(seed=100)
    SimObserver(batch, batch.num_routes)  # the view is written inside the step too
    rng = np.random.default_rng(0)
    routes = rng.integers(batch.num_routes, size=(150, n))
    for r in routes:
        batch.step(r)
    for i in (0, 17, n - 1):
        alone = VecSimulator(sc, 1, record=150)
        alone.reset(seed=100 + i)
        for r in routes[:, i]:
            alone.step(np.array([r]))
        a, b = batch.records(i), alone.records(0)
        for f in RECORD_FIELDS:
            np.testing.assert_array_equal(a[f], b[f], err_msg=f)
    again = VecSimulator(sc, n, record=150, parallel=not batch.parallel)  # threads or not
    SimObserver(again, again.num_routes)
    again.reset(seed=100)
    for r in routes:
        again.step(r)
    for part in ("state", "cache", "workload_state", "view"):
        for name in getattr(batch, part)._fields:
            np.testing.assert_array_equal(
                getattr(getattr(again, part), name),
                getattr(getattr(batch, part), name),
                err_msg=f"{part}.{name}",
            )


def _occupancy_max(start: np.ndarray, end: np.ndarray, weight: np.ndarray) -> float:
    """Largest total weight of intervals [start, end) alive at one instant."""
    t = np.concatenate([start, end])
    w = np.concatenate([weight, -weight])
    order = np.lexsort((w, t))  # at equal times, releases (negative) first
    return float(np.cumsum(w[order]).max()) if t.size else 0.0


@settings(max_examples=12)
@given(
    rate=st.floats(0.2, 6.0),
    gbps=st.floats(1.0, 200.0),
    max_batch=st.integers(1, 16),
    cache=st.integers(0, 400),
    seed=st.integers(0, 2**31),
)
def test_invariants(rate: float, gbps: float, max_batch: int, cache: int, seed: int) -> None:
    """Every request finishes once; TTFT >= unloaded prefill + transfer; decode slots, KV memory
    and link bandwidth are never exceeded; nothing is NaN or infinite."""
    d = starved()
    d["workload"]["arrival"]["rate_rps"] = rate
    d["topology"]["links"][0]["bandwidth_gbps"] = gbps
    cl = d["topology"]["clusters"]
    cl["pd"]["max_batch"] = max_batch
    cl["pd"]["prefix_cache_blocks"] = cache
    d["workload"]["prefix"] = saturated()["workload"]["prefix"]
    sc = parse_scenario(d, "hypothesis")
    n = 120
    sim = VecSimulator(sc, 2, record=n)
    sim.reset(seed=seed)
    _run(sim, n, seed)
    sim.drain()
    S = sim.static
    for e in range(2):
        rec = sim.records(e)
        assert len(rec["arrival_s"]) == n
        fin = rec["finish_s"]
        assert np.isfinite(fin).all()  # every routed request finished (once: one record each)
        for f in RECORD_FIELDS:
            assert np.isfinite(rec[f]).all(), f
        route = rec["route"].astype(int)
        pc = S.route_p[route]
        unc = rec["input_tokens"] - rec["cached_tokens"]
        unloaded = np.array(
            [
                prefill_time(S.prefill_log_t[p], float(u), float(c))
                for p, u, c in zip(pc, unc, rec["cached_tokens"], strict=True)
            ]
        )
        ch = S.route_ch[route]
        nominal = gbps * 1e9 / 8
        xfer = np.where(ch >= 0, rec["kv_bytes"] / nominal + S.ch_latency_s[np.maximum(ch, 0)], 0)
        ttft = rec["first_token_s"] - rec["arrival_s"]
        assert (ttft >= np.maximum(unloaded, xfer) * (1 - 1e-9)).all()
        assert (rec["first_token_s"] >= rec["prefill_end_s"]).all()
        assert (rec["transfer_end_s"] >= rec["prefill_end_s"]).all()
        assert (fin >= rec["first_token_s"] - 1e-9).all()
        # decode slots and KV memory per instance
        need = np.array(
            [
                sc.topology.model.kv_bytes_for(i + o)
                for i, o in zip(rec["input_tokens"], rec["output_tokens"], strict=True)
            ]
        )
        for j in range(int(S.cl_nd.sum())):
            on = rec["decode_instance"] == j
            ds, fs = rec["decode_start_s"][on], fin[on]
            assert _occupancy_max(ds, fs, np.ones(on.sum())) <= max_batch
            assert _occupancy_max(ds, fs, need[on]) <= S.cl_kv_cap[1] * (1 + 1e-12)
    # the link never delivered more than its usable bandwidth allowed
    st_ = sim.state
    assert (st_.l_bytes_done <= st_.l_cap_int * (1 + 1e-9) + 1).all()
    m = sim.metrics()
    for k in ("throughput_rps", "ttft_mean_s", "ttft_p99_s", "link_utilisation"):
        assert np.isfinite(m[k]).all(), k
    assert (m["link_utilisation"] <= 1 + 1e-9).all()
    for key in ("prefill_utilisation_by_cluster", "decode_slot_utilisation_by_cluster"):
        assert np.nanmax(m[key]) <= 1 + 1e-9 and np.nanmin(m[key]) >= -1e-9, key


def test_overload_for_a_million_decisions_stays_finite() -> None:
    """Everything prefilled locally at 3x the local capacity: queues grow for 10^6 decisions
    (16 envs x 62,500) and the state stays finite and consistent."""
    d = starved()
    d["workload"]["arrival"] = {"process": "poisson", "rate_rps": 5.0}
    sim = VecSimulator(parse_scenario(d, "overload"), 16)
    sim.reset(seed=1)
    local = np.full(16, sim.scenario.topology.route_labels().index("pd->pd"))
    for _ in range(62_500):
        sim.step(local)
    st_ = sim.state
    assert int(st_.seq.sum()) == 1_000_000
    assert st_.p_nq.sum(1).min() > 10_000  # the queues really grew
    # "not scheduled" markers
    may_be_inf = {"l_next_t", "l_dl_t", "p_start_t", "p_done_t", "d_next_t", "r_kvarr"}
    may_be_inf |= {"k_end", "loop_next_t"}  # idle engines; no pending start (open loop)
    for array, (enum, prefix) in STATE_LAYOUT.items():
        if array.endswith("f"):
            for member in enum:
                if prefix + member.name.lower() not in may_be_inf:
                    assert np.isfinite(getattr(st_, array)[..., member]).all(), member
    for name in ("l_series", "d_tags"):
        assert np.isfinite(getattr(st_, name)).all(), name
    m = sim.metrics()
    assert np.isfinite(m["ttft_mean_s"]).all() and (m["ttft_p99_s"] > 100).all()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_waiting_integral_sums_to_the_ttfts(name: str) -> None:
    """The dense `waiting` reward's integral never decreases, and once every request has
    finished it equals the sum of their TTFTs exactly; the ``decode_sum_s`` counter equals
    the sum of their decode durations (decode start to last token) as recorded."""
    sc = scenario(name)
    sim = VecSimulator(sc, 2, record=300)
    sim.reset(seed=[5, 6])
    rng = np.random.default_rng(1)
    last = np.zeros(2)
    for _ in range(300):
        sim.step(rng.integers(0, len(sc.topology.routes), 2))
        assert np.all(sim.state.w_area >= last - 1e-9)
        last = sim.state.w_area.copy()
    sim.drain()
    for e in range(2):
        r = sim.records(e)
        ttft = r["first_token_s"] - r["arrival_s"]
        assert sim.state.w_n[e] == 0
        assert sim.state.w_area[e] == pytest.approx(np.nansum(ttft), rel=1e-9)
        decode = r["finish_s"] - r["decode_start_s"]
        assert np.isfinite(decode).all() and (decode > 0).all()
        counted = sim.counters()[e, COUNTERS.index("decode_sum_s")]
        assert counted == pytest.approx(decode.sum(), rel=1e-9)


@pytest.mark.parametrize(
    ("name", "rejects"), [("saturated", False), ("mooncake", False), ("saturated", True)]
)
def test_a_copied_env_stepped_like_its_original_stays_equal(name: str, rejects: bool) -> None:
    """copy_envs is exact: envs copied into another simulator (other seeds, other slot
    count, its view on) and stepped with the same decisions as their originals produce the
    same request records, state, caches and view rows, so also the same future requests.
    With ``rejects`` a fifth of the decisions turn the request away (admission control), so
    the rejection counters and the reject action's view entries are copied too."""
    sc = scenario(name)
    a = VecSimulator(sc, 4, record=400)
    actions = a.num_routes + int(rejects)
    SimObserver(a, actions)
    a.reset(seed=1)
    rng = np.random.default_rng(3)

    def draw(n: int) -> np.ndarray:
        r = rng.integers(a.num_routes, size=n)
        if rejects:
            r[rng.random(n) < 0.2] = REJECT
        return r

    for _ in range(120):
        a.step(draw(4))
    b = VecSimulator(sc, 6, record=400, slots=8)  # fewer slots: copy_envs grows them
    SimObserver(b, actions)
    b.reset(seed=50)
    for _ in range(30):
        b.step(draw(6))
    b.copy_envs(a, [1, 3], [0, 5])
    for _ in range(200):
        routes = draw(4)
        a.step(routes)
        r = draw(6)
        r[0], r[5] = routes[1], routes[3]
        b.step(r)
    # which request slot holds a request depends on when each simulator grew its slots, so
    # the slot-indexed arrays are compared through the records; everything else as it is
    slot_indexed = {"rf", "ri", "free", "pi", "li", "di", "d_slots", "qi", "ei"}
    for src, dst in ((1, 0), (3, 5)):
        ra, rb = a.records(src), b.records(dst)
        assert len(ra["arrival_s"]) > 150
        if rejects:
            assert a.counters()[src, COUNTERS.index("rejected")] > 0
        for f in RECORD_FIELDS:
            np.testing.assert_array_equal(ra[f], rb[f], err_msg=f)
        np.testing.assert_array_equal(
            np.delete(a.state.ei[src], EI.NFREE), np.delete(b.state.ei[dst], EI.NFREE)
        )
        for part in ("state", "cache", "workload_state", "view"):
            for field in getattr(a, part)._fields:
                if field == "cfg" or (part == "state" and field in slot_indexed):
                    continue
                x, y = getattr(getattr(a, part), field), getattr(getattr(b, part), field)
                np.testing.assert_array_equal(x[src], y[dst], err_msg=f"{part}.{field}")
    other = VecSimulator(scenario("light" if name == "mooncake" else "mooncake"), 2)
    other.reset(seed=0)
    with pytest.raises(ValueError, match="different scenarios"):
        other.copy_envs(a, [0], [1])
    with pytest.raises(ValueError, match=r"dst: env indices must be in \[0, 6\)"):
        b.copy_envs(a, [0], [6])


def test_strided_and_reversed_route_arrays_step_like_contiguous_ones() -> None:
    """step takes any integer array: a strided slice or a reversed view routes the same
    requests as a contiguous copy of it."""
    sc = scenario("mooncake")
    sims = [VecSimulator(sc, 5, record=300) for _ in range(3)]
    for sim in sims:
        sim.reset(seed=7)
    rng = np.random.default_rng(0)
    for _ in range(150):
        wide = rng.integers(sims[0].num_routes, size=10)
        routes = np.ascontiguousarray(wide[::2])
        sims[0].step(routes)
        sims[1].step(wide[::2])  # strided
        sims[2].step(routes[::-1].copy()[::-1])  # a reversed view of a reversed copy
    for sim in sims[1:]:
        for e in range(5):
            for f in RECORD_FIELDS:
                np.testing.assert_array_equal(sims[0].records(e)[f], sim.records(e)[f])
