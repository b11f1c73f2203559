"""Co-located engines, closed-loop workloads, per-pool serving specs and the per-request
serving overhead: properties of the fast engine (the differential tests against the
reference simulator run on these scenarios in tests/test_sim_engine.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prfaas_env.env import PrfaaSVectorEnv
from prfaas_env.errors import ConfigError, NotApplicableError
from prfaas_env.policies import RouteTable, make_policy, policy_names
from prfaas_env.sim.costs import decode_step_time, pass_time, prefill_time, tables_for
from prfaas_env.sim.engine import VecSimulator
from prfaas_env.sim.reference import ReferenceSimulator
from prfaas_env.sim.scenario import parse_scenario
from prfaas_env.sim.state import CI, KI, REJECT
from prfaas_env.sim.workload import sample
from tests.sim_scenarios import base, closed_colocated, closed_pd, colocated


def _drive(sim: VecSimulator, steps: int, seed: int, check: bool = False) -> None:
    """Random routes; with ``check``, assert the engines' invariants at every decision."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        sim.step(rng.integers(sim.num_routes, size=sim.num_envs))
        if check:
            _check_engines(sim)


def _check_engines(sim: VecSimulator) -> None:
    """KV blocks never over capacity, running requests never over ``max_num_seqs``, the
    step in flight never over the token budget, per rank."""
    S, st_ = sim.static, sim.state
    for c in np.flatnonzero(S.cl_nc):
        r0, nr = S.cl_r0[c], S.cl_nc[c] * S.cl_ranks[c]
        for g in range(r0, r0 + nr):
            free = st_.ki[:, g, KI.FREE]
            run = st_.ki[:, g, KI.NRUN]
            assert (free >= 0).all() and (free <= S.cl_kv_blocks[c]).all()
            assert (run <= S.cl_max_seqs[c]).all()
            for e in range(sim.num_envs):
                slots = st_.k_run[e, g, : run[e]]
                assert (slots >= 0).all()
                held = st_.ci[e, slots, CI.BLK].sum()
                assert held + free[e] == S.cl_kv_blocks[c]  # blocks are conserved
                assert st_.ci[e, slots, CI.SCH].sum() <= S.cl_budget[c]


def _chunked_alone_s(S, c: int, uncached: int, cached: int) -> float:
    """Seconds an idle engine of cluster ``c`` takes to prefill a prompt alone: one step
    per chunk of the token budget (non-attention, attention after the tokens before it,
    the step overhead)."""
    t, done = 0.0, 0
    budget = int(S.cl_budget[c])
    while done < uncached:
        n = min(budget, uncached - done)
        attn = prefill_time(S.co_pa_log_t[c], float(n), float(cached + done))
        t += pass_time(S.co_na_log_t[c], float(n)) + attn + S.cl_step_s[c]
        done += n
    return t


@settings(max_examples=10, deadline=None)
@given(
    rate=st.floats(0.05, 3.0),
    seqs=st.integers(1, 12),
    budget=st.sampled_from([512, 2048, 8192]),
    blocks=st.integers(301, 1200),
    ranks=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**31),
)
def test_engine_invariants(
    rate: float, seqs: int, budget: int, blocks: int, ranks: int, seed: int
) -> None:
    """Every request finishes once; TTFT at least the unloaded chunked prefill; KV never over
    capacity, running requests never over max_num_seqs, tokens per step never over the
    budget; finish after first token; nothing NaN."""
    d = colocated()
    pd = d["topology"]["clusters"]["pd"]
    pd.update(max_num_seqs=seqs, max_num_batched_tokens=budget, kv_blocks=blocks)
    pd["serving"] = {"attention_dp": ranks}
    d["workload"]["arrival"]["rate_rps"] = rate
    sim = VecSimulator(parse_scenario(d, "hypothesis"), 2, record=80)
    sim.reset(seed=seed)
    _drive(sim, 80, seed, check=True)
    sim.drain()
    S = sim.static
    for e in range(2):
        rec = sim.records(e)
        assert len(rec["arrival_s"]) == 80
        for f, v in rec.items():
            assert np.isfinite(v).all(), f
        assert (rec["first_token_s"] >= rec["transfer_end_s"]).all()
        assert (rec["finish_s"] >= rec["first_token_s"]).all()
        local = rec["route"] == 1
        unc = rec["input_tokens"] - rec["cached_tokens"]
        alone = [
            _chunked_alone_s(S, 1, int(u), int(c))
            for u, c in zip(unc[local], rec["cached_tokens"][local], strict=True)
        ]
        ttft = (rec["first_token_s"] - rec["arrival_s"])[local]
        assert (ttft >= np.array(alone) * (1 - 1e-12)).all()
    assert int(sim.state.m_done.sum()) == 160  # each request finished once
    assert (sim.state.k_free == np.repeat(S.cl_kv_blocks, S.cl_nc * S.cl_ranks)).all()


def test_the_scenarios_exercise_preemption_chunking_offload_and_ranks() -> None:
    """The differential scenarios really preempt, chunk prompts, decode remote prefills and
    hit the prefix cache, on engines of two ranks."""
    sc = parse_scenario(colocated(), "colocated")
    ref = ReferenceSimulator(sc, 11)
    rng = np.random.default_rng(5)
    for r in rng.integers(2, size=250):
        ref.step(int(r))
    ref.drain()
    assert ref.preemptions > 0
    rec = ref.records()
    local = rec["route"] == 1
    budget = sc.topology.clusters[1].max_num_batched_tokens
    assert (rec["input_tokens"][local] - rec["cached_tokens"][local] > budget).any()
    assert (rec["cached_tokens"] > 0).any()
    assert (~local).sum() > 50 and np.isfinite(rec["finish_s"][~local]).all()
    assert len(ref.engines[0].ranks) == 2


def test_a_lone_request_takes_its_chunks_and_then_one_step_per_token() -> None:
    """An idle engine prefills a prompt in chunks of the budget (each step: non-attention of
    the chunk, its attention after the tokens before it, the step overhead), emits the first
    token with the last chunk, then one decode step per further token."""
    d = colocated()
    d["workload"] = {
        "kind": "synthetic",
        "arrival": {"process": "poisson", "rate_rps": 1e-4},
        "input": {"distribution": "fixed", "tokens": 10_000},
        "output": {"distribution": "fixed", "tokens": 3},
    }
    sc = parse_scenario(d, "lone")
    sim = VecSimulator(sc, 1, record=1)
    sim.reset(seed=0)
    sim.step(np.array([1]))
    sim.drain()
    rec = sim.records(0)
    S = sim.static
    na, da = S.co_na_log_t[1], S.co_da_log_t[1]
    t = rec["arrival_s"][0] + _chunked_alone_s(S, 1, 10_000, 0)
    assert rec["first_token_s"][0] == pytest.approx(t, rel=1e-12)
    assert rec["prefill_end_s"][0] == pytest.approx(t, rel=1e-12)
    for ctx in (10_001, 10_002):  # two more tokens, one decode step each
        t += pass_time(na, 1.0) + S.cl_step_s[1] + decode_step_time(da, 1, float(ctx))
        t += S.cl_seq_s[1]
    assert rec["finish_s"][0] == pytest.approx(t, rel=1e-12)


@pytest.mark.parametrize("make", [closed_colocated, closed_pd], ids=["colocated", "pd"])
def test_closed_loop_keeps_exactly_n_in_flight(make) -> None:
    """Client i starts at i * ramp_s / N; every later request starts when an earlier one
    finishes: the arrivals are exactly the earliest of the first starts and the finish times,
    so once every client has started, N are in flight."""
    sc = parse_scenario(make(), "closed")
    n_clients, ramp = sc.workload.concurrency, sc.workload.ramp_s
    sim = VecSimulator(sc, 1, record=300)
    sim.reset(seed=4)
    _drive(sim, 300, 4)
    rec = sim.records(0)
    arr, fin = rec["arrival_s"], rec["finish_s"]
    first = np.arange(n_clients) * (ramp / n_clients)
    done = fin[np.isfinite(fin)]
    want = np.sort(np.concatenate([first, done]))[:300]
    np.testing.assert_array_equal(np.sort(arr), want)
    for t in arr[arr >= first[-1]]:  # counting the new request, N are in flight
        assert ((arr <= t) & ~(fin <= t)).sum() >= n_clients
        assert ((arr < t) & ~(fin <= t)).sum() <= n_clients - 1


def test_closed_loop_rejection_starts_the_next_request_at_once() -> None:
    sim = VecSimulator(parse_scenario(closed_pd(), "closed"), 1, record=40)
    sim.reset(seed=0)
    for _ in range(20):  # the first wave (clients starting over 5 s), routed
        sim.step(np.array([1]))
    assert sim.now[0] > 0  # the next request waited for a completion
    t = sim.now[0]
    sim.step(np.array([REJECT]))
    assert sim.now[0] == t  # its client sent the next one at once
    assert int(sim.state.m_rejected[0]) == 1


def test_closed_loop_stream_lengths_do_not_depend_on_routing() -> None:
    """Under a closed loop arrival times follow completions, but the lengths drawn are the
    workload's own (``sample`` gives them, with NaN arrival times)."""
    sc = parse_scenario(closed_pd(), "closed")
    want = sample(sc.workload, 60, seed=9)
    assert np.isnan(want["arrival_s"]).all()
    for route in (0, 1):
        sim = VecSimulator(sc, 1, record=60)
        sim.reset(seed=9)
        for _ in range(60):
            sim.step(np.array([route]))
        np.testing.assert_array_equal(sim.records(0)["input_tokens"], want["input_tokens"])


@pytest.mark.parametrize("make", [colocated, closed_colocated], ids=["open", "closed"])
def test_engine_matches_reference_with_a_serving_overhead(make) -> None:
    """Differential, with the serving overhead on (the fitted roofline has none): a
    per-request delay, a serial frontend, a step and a per-sequence cost."""
    sc = parse_scenario(make(), "overhead")
    t = tables_for(sc.topology)
    t = replace(
        t,
        request_s=np.full_like(t.request_s, 0.08),
        frontend_s=np.full_like(t.frontend_s, 0.02),
        co_step_s=np.full_like(t.co_step_s, 0.003),
        co_seq_s=np.full_like(t.co_seq_s, 1e-5),
    )
    vec = VecSimulator(sc, 1, record=200, tables=t)
    vec.reset(seed=3)
    ref = ReferenceSimulator(sc, 3, tables=t)
    for r in np.random.default_rng(1).integers(2, size=200):
        vec.step(np.array([r]))
        ref.step(int(r))
    vec.drain()
    ref.drain()
    fast, slow = vec.records(0), ref.records()
    for f in fast:
        np.testing.assert_allclose(fast[f], slow[f], rtol=1e-9, atol=1e-9, err_msg=f)
    local = fast["route"] == 1
    assert (fast["prefill_start_s"][local] - fast["arrival_s"][local] >= 0.02 - 1e-12).all()


@pytest.mark.parametrize("make", [base, colocated], ids=["pd", "colocated"])
def test_request_overhead_shifts_first_and_last_tokens_only(make) -> None:
    """The serving overhead per request delays what the client sees (first token, decode
    start, finish) by exactly that much and changes nothing else in an open loop."""
    sc = parse_scenario(make(), "overhead")
    tables = tables_for(sc.topology)
    runs = []
    for req_s in (0.0, 0.25):
        t = replace(tables, request_s=np.full_like(tables.request_s, req_s))
        sim = VecSimulator(sc, 1, record=120, tables=t)
        sim.reset(seed=2)
        _drive(sim, 120, 2)
        sim.drain()
        runs.append(sim.records(0))
    a, b = runs
    for f in a:
        shift = 0.25 if f in ("first_token_s", "decode_start_s", "finish_s") else 0.0
        np.testing.assert_allclose(b[f], a[f] + shift, rtol=1e-12, atol=1e-9, err_msg=f)


def test_pd_pools_have_their_own_parallelism() -> None:
    """A PD cluster's prefill pool of 2 attention data-parallel ranks prefills two requests
    at once per instance; its decode pool's table comes from the decode pool's spec."""
    d = base()
    pd = d["topology"]["clusters"]["pd"]
    pd["prefill_pool"] = {"gpus_per_instance": 8, "serving": {"attention_dp": 2}}
    pd["decode_pool"] = {"gpus_per_instance": 4}
    d["topology"]["clusters"]["pd"]["gpu"] = "h200"
    sc = parse_scenario(d, "pools")
    sim = VecSimulator(sc, 1)
    assert sim.static.cl_np[1] == 2 * pd["prefill_instances"]
    models = sc.topology.decode_cost_models()
    assert models[1].gpus == 4 and sc.topology.cost_models()[1].gpus == 8
    want = np.log(models[1].decode_step_time_continuous_s(np.array(3.0), np.array(3.0)))
    assert sim.tables.decode_log_t[1, 3, 0] == pytest.approx(float(want))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(max_batch=4), "clusters.pd.max_batch: not a key of a colocated"),
        (lambda c: c.pop("instances"), "clusters.pd.instances: missing"),
        (lambda c: c.update(max_num_seqs=0), "clusters.pd.max_num_seqs"),
        (lambda c: c.update(max_num_batched_tokens=-5), "clusters.pd.max_num_batched_tokens"),
        (lambda c: c.update(kv_blocks=3), "clusters.pd: kv_blocks is 3 per rank, fewer than"),
        (lambda c: c.update(kv_block_tokens="16"), "clusters.pd.kv_block_tokens: expected"),
    ],
)
def test_colocated_keys_are_checked_with_the_cluster_and_key(edit, message: str) -> None:
    d = colocated()
    edit(d["topology"]["clusters"]["pd"])
    with pytest.raises(ConfigError, match=message):
        parse_scenario(d, "bad")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda w: w["arrival"].pop("concurrency"), "arrival: missing key.s. concurrency"),
        (lambda w: w["arrival"].update(concurrency=0), "arrival.concurrency"),
        (lambda w: w["arrival"].update(rate_rps=2.0), "unknown key.*rate_rps|rate_rps"),
        (
            lambda w: w.update(rate_shape={"kind": "ramp", "start": 1, "end": 2, "duration_s": 9}),
            "rate_shape: not allowed with a closed loop",
        ),
        (lambda w: w.update(rate_multiplier=2.0), "rate_multiplier: not allowed with a closed"),
    ],
)
def test_closed_loop_keys_are_checked(edit, message: str) -> None:
    d = closed_pd()
    edit(d["workload"])
    with pytest.raises(ConfigError, match=message):
        parse_scenario(d, "bad")


def test_pd_keys_on_a_colocated_cluster_and_back_are_refused() -> None:
    d = base()
    d["topology"]["clusters"]["pd"]["max_num_seqs"] = 8
    with pytest.raises(ConfigError, match=r"pd\.max_num_seqs: not a key of a pd cluster"):
        parse_scenario(d, "bad")
    d = base()
    d["topology"]["clusters"]["pd"]["prefill_pool"] = {"gpus": 4}
    with pytest.raises(ConfigError, match="prefill_pool"):
        parse_scenario(d, "bad")


@pytest.mark.parametrize("name", policy_names())
@pytest.mark.parametrize("make", [colocated, closed_colocated], ids=["open", "closed"])
def test_the_environment_and_every_heuristic_run_on_a_colocated_cluster(name: str, make) -> None:
    """A co-located cluster is a prefill entity and a decode entity of the observation; every
    heuristic routes on it (the paper's analytic model says it does not apply), through the
    environment, with valid observations."""
    d = make()
    d["env"] = {"max_decisions": 10_000}
    env = PrfaaSVectorEnv(2, d)
    topo = env.scenario.topology
    routes = RouteTable.from_topology(topo, env.config.admission_control)
    assert env.observer.encoder.prefill_clusters == ["prfaas", "pd"]
    assert env.observer.encoder.decode_clusters == ["pd"]
    try:
        policy = make_policy(name, routes, topo)
    except NotApplicableError:
        assert name == "prfaas_optimised"
        return
    policy.reset(2, 0)
    obs, _ = env.reset(seed=0)
    for _ in range(60):
        mask = env.action_masks()
        obs, *_ = env.step(policy.act(env.view(), mask))
        assert env.observation_space.contains(obs)
    assert env.sim.metrics()["completed"].sum() > 0
