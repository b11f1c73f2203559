"""Simulator parts: cost tables, prefix cache, workloads and scenario validation."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from numba.core.errors import TypingError

from prfaas_env.costmodel import CostModel
from prfaas_env.errors import ConfigError
from prfaas_env.sim.cache import find, new_cache, touch_or_insert
from prfaas_env.sim.costs import build_tables, decode_step_time, kv_bytes, prefill_time
from prfaas_env.sim.engine import _ARRIVAL_CHECK_STEPS, ARRIVAL_LIMIT, VecSimulator
from prfaas_env.sim.prefetch import byte_address, prefetch_bytes, prefetch_row, row_bytes
from prfaas_env.sim.reference import LRUCache
from prfaas_env.sim.scenario import load_scenario, parse_scenario
from prfaas_env.sim.workload import MAX_OUTPUT_TOKENS, LengthDist
from tests.sim_scenarios import ROOT, base, mooncake


@pytest.mark.parametrize("gpu", ["h200", "h20"])
def test_cost_tables_within_one_percent_of_the_cost_model(gpu: str) -> None:
    cm = CostModel("prfaas-1t-hybrid", gpu, 8)
    tab = build_tables([cm], [128])
    rng = np.random.default_rng(0)
    u = np.round(np.exp(rng.uniform(0, np.log(262_144), 800)))
    c = np.round(np.where(rng.random(800) < 0.3, 0, np.exp(rng.uniform(0, np.log(131_072), 800))))
    got = np.array([prefill_time(tab.prefill_log_t[0], a, b) for a, b in zip(u, c, strict=True)])
    assert np.abs(got / cm.prefill_time_s(u, c) - 1).max() < 0.01
    n = rng.integers(1, 129, 800)
    ctx = np.round(n * np.exp(rng.uniform(0, np.log(262_144), 800)))
    got = np.array(
        [decode_step_time(tab.decode_log_t[0], int(a), b) for a, b in zip(n, ctx, strict=True)]
    )
    assert np.abs(got / cm.decode_step_time_s(n, ctx) - 1).max() < 0.01
    for tokens in (1, 1000, 131_072):
        args = (tab.kv_fixed, tab.kv_per_token, tab.swa_per_token, tab.swa_window, float(tokens))
        assert kv_bytes(*args) == pytest.approx(float(cm.kv_bytes(tokens)), rel=1e-12)


def test_kv_bytes_exact_for_sliding_window_models() -> None:
    cm = CostModel("llama-3.1-70b", "h100", 8)
    for name in ("kimi-linear-48b-a3b", "deepseek-v3", "llama-3.1-70b"):
        cm = CostModel(name, "h100", 8)
        tab = build_tables([cm], [4])
        for tokens in (1, 4095, 4096, 4097, 200_000):
            got = kv_bytes(
                tab.kv_fixed, tab.kv_per_token, tab.swa_per_token, tab.swa_window, float(tokens)
            )
            assert got == pytest.approx(float(cm.kv_bytes(tokens)), rel=1e-12)


@settings(max_examples=40)
@given(
    capacity=st.integers(1, 12),
    keys=st.lists(st.integers(0, 30), min_size=1, max_size=200),
)
def test_prefix_cache_is_exact_lru(capacity: int, keys: list[int]) -> None:
    """The array cache agrees with an OrderedDict LRU after every access."""
    cs = new_cache(1, [capacity, 0])
    ref = LRUCache(capacity)
    for k in keys:
        assert touch_or_insert(cs, 0, 0, k) == ref.access(k)
        for q in range(31):
            assert (find(cs, 0, 0, q) >= 0) == (q in ref)
    # walk the recency list from the head: most recent first
    order, n = [], cs.head[0, 0]
    while n >= 0:
        order.append(int(cs.key[0, 0, n]))
        n = cs.next[0, 0, n]
    assert order == list(reversed(ref.blocks))
    assert not touch_or_insert(cs, 0, 1, 5) and find(cs, 0, 1, 5) == -1  # capacity 0


def _first_requests(d: dict, n: int, seed: int = 0) -> VecSimulator:
    sim = VecSimulator(parse_scenario(d, "test"), 1, record=n)
    sim.reset(seed=seed)
    route = sim.scenario.topology.route_labels().index("pd->pd")
    for _ in range(n):
        sim.step(np.array([route]))
    return sim


def test_paper_input_lengths_and_poisson_rate() -> None:
    d = base()
    d["workload"]["arrival"]["rate_rps"] = 50.0  # many arrivals in little simulated time
    rec = _first_requests(d, 4000).records(0)
    inp = rec["input_tokens"]
    assert inp.min() >= 128 and inp.max() <= 131_072
    mean = LengthDist("lognormal", mu=9.9, sigma=1.0, low=128, high=131_072).mean()
    assert 25_000 < mean < 29_000  # the paper quotes a mean of about 27K
    assert abs(inp.mean() / mean - 1) < 0.05
    gaps = np.diff(rec["arrival_s"])
    assert abs(gaps.mean() * 50 - 1) < 0.05
    assert abs(gaps.std() / gaps.mean() - 1) < 0.08  # Poisson: coefficient of variation 1


@pytest.mark.parametrize(
    ("arrival", "cv_range"),
    [
        ({"process": "gamma", "rate_rps": 50.0, "cv": 3.0}, (2.6, 3.4)),
        (
            {
                "process": "mmpp",
                "rate_rps": 50.0,
                "burst_factor": 8,
                "burst_fraction": 0.2,
                "burst_mean_s": 0.25,
            },
            (1.1, 3.0),
        ),
    ],
)
def test_bursty_arrivals_keep_their_mean_rate(arrival: dict, cv_range: tuple) -> None:
    d = base()
    d["workload"]["arrival"] = arrival
    d["workload"]["input"] = {"distribution": "fixed", "tokens": 1000}
    gaps = np.diff(_first_requests(d, 20_000, seed=3).records(0)["arrival_s"])
    assert abs(gaps.mean() * 50 - 1) < 0.1
    assert cv_range[0] < gaps.std() / gaps.mean() < cv_range[1]


def test_session_reuse_creates_shared_prefixes() -> None:
    d = base()
    d["workload"]["input"] = {"distribution": "fixed", "tokens": 8192}
    d["workload"]["prefix"] = {"session_reuse": 0.6, "sessions": 8}
    d["topology"]["clusters"]["pd"]["prefix_cache_blocks"] = 100_000
    rec = _first_requests(d, 400).records(0)
    hit = (rec["cached_tokens"] > 0).mean()
    assert 0.45 < hit < 0.75  # about the reuse probability (sessions fill up quickly)
    assert rec["cached_tokens"].max() == 8191  # a repeated prompt: all but the last token


def test_trace_replay_follows_the_trace_and_loops() -> None:
    d = mooncake()
    d["workload"].update(start="first", window_s=[0, 60], rate_multiplier=2.0)
    sc = parse_scenario(d, "test")
    tr = sc.workload.trace
    assert tr is not None
    n = len(tr)
    rec = _first_requests(d, n + 5).records(0)
    np.testing.assert_allclose(rec["arrival_s"][:n], tr.arrival_s / 2.0)
    np.testing.assert_array_equal(rec["input_tokens"][:n], tr.input_tokens)
    gap = tr.duration_s / (n - 1)
    assert rec["arrival_s"][n] == pytest.approx((tr.duration_s + gap) / 2.0)
    # the second loop does not hit blocks the first loop cached (ids are shifted)
    assert rec["cached_tokens"][n] < rec["input_tokens"][n] - 512 or tr.block_offsets[1] == 1


def test_output_multiplier_scales_every_output_length_of_synthetic_and_trace_workloads() -> None:
    """``workload.output_multiplier`` scales each drawn output (rounded, at least 1) and
    nothing else: the arrivals and inputs are those of the unscaled workload, and the mean the
    observations carry scales with it."""
    for make in (base, mooncake):
        d = make()
        d["workload"]["output"] = {"distribution": "lognormal", "mu": 5.0, "sigma": 1.0}
        if make is mooncake:
            del d["workload"]["output"]
            d["workload"].update(start="first", window_s=[0, 60])
        plain = _first_requests(d, 60).records(0)
        d["workload"]["output_multiplier"] = 2.5
        longer = _first_requests(d, 60).records(0)
        np.testing.assert_array_equal(longer["arrival_s"], plain["arrival_s"])
        np.testing.assert_array_equal(longer["input_tokens"], plain["input_tokens"])
        want = np.maximum(np.floor(plain["output_tokens"] * 2.5 + 0.5), 1)
        np.testing.assert_array_equal(longer["output_tokens"], want)
        one = parse_scenario({**d, "workload": {**d["workload"], "output_multiplier": 1}}, "t")
        two = parse_scenario(d, "t")
        assert two.workload.mean_output_tokens() == pytest.approx(
            2.5 * one.workload.mean_output_tokens()
        )
    sc = parse_scenario(base(), "t").with_output(0.5).with_output(3.0)
    assert sc.workload.output_multiplier == 1.5 and "output x3" in sc.source
    d = base()
    d["workload"]["output_multiplier"] = 0
    assert "workload.output_multiplier" in _err(d)
    d = base()
    d["workload"]["output"] = {"distribution": "fixed", "tokens": 100_000}
    d["workload"]["output_multiplier"] = 20  # what the KV capacity check sizes for
    assert parse_scenario(d, "t").workload.longest_output_tokens() == 2_000_000


def test_with_links_scales_bandwidth_and_makes_steady_links_fluctuate() -> None:
    """``Scenario.with_links`` scales every link's nominal bandwidth; with a fluctuation it
    turns steady links fluctuating and keeps processes that already change, and outages."""
    d = base()
    d["topology"]["links"][0]["outages"] = [{"start_s": 50, "duration_s": 10}]
    sc = parse_scenario(d, "t")
    (link,) = sc.topology.links
    slower = sc.with_links(0.25)
    (s1,) = slower.topology.links
    assert s1.bandwidth_gbps == pytest.approx(0.25 * link.bandwidth_gbps)
    assert s1.process == link.process and "links x0.25" in slower.source
    shaky = sc.with_links(0.5, {"mean_fraction": 0.6, "volatility": 0.4, "correlation_s": 20})
    (s2,) = shaky.topology.links
    assert s2.process.kind == "fluctuating" and s2.process.mean_fraction == 0.6
    assert s2.process.outages == link.process.outages != ()
    again = shaky.with_links(2.0, {"mean_fraction": 0.9, "volatility": 0.1})
    (s3,) = again.topology.links
    assert s3.process.mean_fraction == 0.6  # already fluctuating: kept
    assert s3.bandwidth_gbps == pytest.approx(link.bandwidth_gbps)
    assert sc.workload == shaky.workload and sc.topology.clusters == shaky.topology.clusters
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ConfigError, match="link multiplier"):
            sc.with_links(bad)


def test_with_instances_resizes_the_named_pools_only() -> None:
    """``Scenario.with_instances`` scales the named clusters' instance counts (rounded, at
    least 1, empty pools stay empty), leaves everything else alone, and names an unknown
    cluster or key."""
    sc = parse_scenario(base(), "t")
    pd = next(c for c in sc.topology.clusters if c.role == "pd")
    pre = next(c for c in sc.topology.clusters if c.role == "prefill")
    out = sc.with_instances(
        {pd.name: {"prefill_instances": 0.01, "decode_instances": 2.6}, pre.name: {}}
    )
    by = {c.name: c for c in out.topology.clusters}
    assert by[pd.name].prefill_instances == 1
    assert by[pd.name].decode_instances == round(2.6 * pd.decode_instances)
    assert by[pre.name] == pre and by[pre.name].decode_instances == 0
    assert out.workload == sc.workload and out.topology.links == sc.topology.links
    assert f"{pd.name}.decode_instances={by[pd.name].decode_instances}" in out.source
    with pytest.raises(ConfigError, match="unknown cluster 'nope'; clusters: "):
        sc.with_instances({"nope": {"prefill_instances": 2.0}})
    with pytest.raises(ConfigError, match="max_batch: not an instance count; allowed: "):
        sc.with_instances({pd.name: {"max_batch": 2.0}})
    with pytest.raises(ConfigError, match="decode_instances multiplier"):
        sc.with_instances({pd.name: {"decode_instances": 0.0}})


def _err(d: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_scenario(d, "cfg.yaml")
    return str(exc.value)


def test_scenario_errors_name_the_key_and_the_allowed_values() -> None:
    d = base()
    d["topology"]["clusters"]["pd"]["role"] = "decode"
    assert "cfg.yaml: topology.clusters.pd.role" in _err(d) and "pd, prefill" in _err(d)
    d = base()
    d["topology"]["clusters"]["pd"]["datacenter"] = "mars"
    assert "not declared" in _err(d)
    d = base()
    d["topology"]["links"][0]["between"] = ["remote", "moon"]
    assert "links[0].between" in _err(d)
    d = base()
    d["topology"]["links"][0]["bandwidth"] = {"kind": "wobbly"}
    assert "constant, fluctuating, replay" in _err(d)
    d = base()
    d["workload"]["arrival"]["process"] = "hawkes"
    assert "workload.arrival.process" in _err(d) and "poisson, gamma, mmpp" in _err(d)
    d = base()
    d["workload"]["input"] = {"distribution": "lognormal", "mu": 30, "sigma": 0.1, "max": 1000}
    assert "mass" in _err(d)
    d = base()
    d["topology"]["clusters"]["pd"]["gpu"] = "l40s"
    assert "do not fit" in _err(d)
    d = base()
    d["topology"]["clusters"]["pd"]["max_batches"] = 3
    assert "unknown key(s) max_batches" in _err(d)
    d = base()
    d["topology"]["block_tokens"] = 256
    d["workload"] = mooncake()["workload"]
    assert "block" in _err(d)
    d = base()
    d["workload"] = {"kind": "trace", "trace": "no-such-trace"}
    assert "workload.trace" in _err(d)


def test_replay_csv_errors_name_the_line(tmp_path: Path) -> None:
    csv = tmp_path / "bw.csv"
    csv.write_text("time_s,gbps\n0,100\n10,50\n5,20\n")
    d = base()
    d["topology"]["links"][0]["bandwidth"] = {"kind": "replay", "csv": str(csv)}
    assert f"{csv}:4" in _err(d)
    csv.write_text("time_s,gbps\n0,100\n10,abc\n")
    assert f"{csv}:3" in _err(d)
    csv.write_text("time_s,gbps\n0,100\n30,0\n60,40\n")
    sc = parse_scenario(d, "cfg.yaml")
    s = sc.topology.links[0].process.series(100, 90, np.random.default_rng(0))
    assert s[0] == s[29] == 100e9 / 8 and s[30] == 0 and s[60] == 40e9 / 8


def test_shipped_config_loads() -> None:
    sc = load_scenario(ROOT / "configs" / "paper_prfaas.yaml")
    assert sc.topology.route_labels() == ["prfaas->pd", "pd->pd"]
    assert math.isclose(sc.workload.mean_rate_rps(), 1.0)


def test_azure_trace_replay_and_utilisation(tmp_path: Path) -> None:
    """An Azure CSV replays (no prefix information: nothing is cached), and the per-cluster
    utilisations stay within [0, 1]."""
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(200):
        rows.append(f"2023-11-16 18:{i // 60:02d}:{i % 60:02d}.5000000,{1000 + 37 * i},{50 + i}")
    path = tmp_path / "azure.csv"
    path.write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")
    d = base()
    d["workload"] = {"kind": "trace", "trace": str(path), "format": "azure", "start": "first"}
    d["topology"]["clusters"]["pd"]["prefix_cache_blocks"] = 1000
    sim = _first_requests(d, 200)
    rec = sim.records(0)
    np.testing.assert_allclose(rec["arrival_s"], np.arange(200.0))
    np.testing.assert_array_equal(rec["input_tokens"], 1000 + 37 * np.arange(200))
    assert (rec["cached_tokens"] == 0).all()
    m = sim.metrics()
    for key in ("prefill_utilisation_by_cluster", "decode_slot_utilisation_by_cluster"):
        v = m[key][0]
        assert np.nanmin(v) >= 0 and np.nanmax(v) <= 1 + 1e-9, key
    assert np.isnan(m["decode_slot_utilisation_by_cluster"][0, 0])  # prefill-only cluster
    assert m["prefill_utilisation_by_cluster"][0, 1] > 0  # everything went to pd


@njit(cache=False)
def _prefetch_everything(a: np.ndarray) -> int:
    for r in range(a.shape[0]):
        prefetch_row(a, r)
        prefetch_bytes(a, r, row_bytes(a) - 1)
    return row_bytes(a)


@njit(cache=False)
def _addresses(a: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    out = np.empty((a.shape[0], offsets.size), np.int64)
    for r in range(a.shape[0]):
        for i in range(offsets.size):
            out[r, i] = byte_address(a, r, offsets[i])
    return out


_SHAPES = [
    np.zeros(7, np.uint64),
    np.zeros((5, 3)),
    np.zeros((4, 7, 3), np.int32),
    np.zeros((3, 100, 11), np.int64),
    np.zeros((10, 3))[::5][:1],  # C-contiguous, yet its first stride is not its row size
]


@pytest.mark.parametrize("a", _SHAPES, ids=lambda a: f"{a.shape}-{a.dtype}")
def test_prefetch_addresses_rows_exactly(a: np.ndarray) -> None:
    """The prefetched address of byte ``off`` of row ``r`` is that byte's address, and
    prefetching every row runs and leaves the array as it was."""
    a = a.copy() if a.base is None else a
    a[...] = np.arange(a.size).reshape(a.shape)
    before = a.copy()
    row = a[0].nbytes
    assert _prefetch_everything(a) == row
    offsets = np.array([0, 1, row - 1], np.int64)
    expect = a.ctypes.data + np.arange(a.shape[0])[:, None] * a.strides[0] + offsets[None, :]
    np.testing.assert_array_equal(_addresses(a, offsets), expect)
    np.testing.assert_array_equal(a, before)


def test_prefetch_refuses_non_contiguous_arrays() -> None:
    with pytest.raises(TypingError):
        _prefetch_everything(np.zeros((4, 6))[:, ::2])


def test_trace_with_an_output_too_long_for_a_request_slot_is_refused(tmp_path: Path) -> None:
    """Request slots hold 32-bit ints, so a trace asking for more than MAX_OUTPUT_TOKENS output
    tokens is refused with the key and the limit, not wrapped around."""
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:00:00.5000000,1000,50\n"
        f"2023-11-16 18:00:01.5000000,1000,{MAX_OUTPUT_TOKENS + 1}\n"
    )
    d = base()
    d["workload"] = {"kind": "trace", "trace": str(path), "format": "azure"}
    msg = (
        rf"trace: a request has {MAX_OUTPUT_TOKENS + 1} output tokens; .* most {MAX_OUTPUT_TOKENS}$"
    )
    with pytest.raises(ConfigError, match=msg):
        parse_scenario(d, "cfg.yaml")


def test_step_refuses_an_env_whose_counters_could_overflow() -> None:
    """The slots' request numbers, histogram counts and session numbers are 32-bit: at the
    periodic check, an env near ARRIVAL_LIMIT arrivals since its reset stops the run with its
    index; a reset clears it."""
    sim = VecSimulator(parse_scenario(base(), "cfg.yaml"), 3)
    sim.reset(seed=0)
    sim._unchecked_steps = _ARRIVAL_CHECK_STEPS - 1
    sim.step(np.zeros(3, np.int64))  # the check runs and passes
    assert sim._unchecked_steps == 0
    sim.state.m_rejected[1] = ARRIVAL_LIMIT - _ARRIVAL_CHECK_STEPS - 1
    sim.state.seq[1] = 1  # arrivals = the first that is refused
    sim._unchecked_steps = _ARRIVAL_CHECK_STEPS - 1
    with pytest.raises(RuntimeError, match="env 1 has had 2,146,435,071 arrivals"):
        sim.step(np.zeros(3, np.int64))
    with pytest.raises(RuntimeError, match="env 1"):  # and at every step after, until reset
        sim.step(np.zeros(3, np.int64))
    sim.reset(seed=0, mask=np.array([False, True, False]))
    sim._unchecked_steps = _ARRIVAL_CHECK_STEPS - 1
    sim.step(np.zeros(3, np.int64))


def test_compiled_code_cache_is_keyed_by_the_sources_and_never_deleted(tmp_path: Path) -> None:
    """The cache folder is named after a digest of the compiled sources: another source,
    another folder; importing deletes nothing (another digest's files survive)."""
    import shutil
    import subprocess
    import sys

    from prfaas_env.sim import jit

    pkg = tmp_path / "pkg"
    for pattern in jit.COMPILED_SOURCES:
        for f in jit.PACKAGE.glob(pattern):
            target = pkg / f.relative_to(jit.PACKAGE)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target)
    same = jit.sources_digest(pkg)
    assert same == jit.sources_digest()
    kernel = pkg / "sim" / "kernel.py"
    kernel.write_text(kernel.read_text() + "\n# edited\n")
    assert jit.sources_digest(pkg) != same
    cache = tmp_path / "cache"
    old = cache / "numba-0123456789abcdef" / "x.nbi"
    old.parent.mkdir(parents=True)
    old.write_text("stale")
    code = "from prfaas_env.sim import jit, kernel; print(jit.CACHE_DIR)"
    env = {**os.environ, "PRFAAS_ENV_CACHE": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(cache / f"numba-{same}")
    assert old.read_text() == "stale"
