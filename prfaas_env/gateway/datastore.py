"""The picker's datastore: endpoints, their scraped metrics, the picker's own bookkeeping
of what it routed, and the live state a router reads, built from all three.

Each live-state entry is made of (docs/gateway.md has the full table; times become the
deployment's seconds through the inventory's ``time_scale``):

- ``prefill.C.cached_tokens``: the prompt's leading blocks found in C's LRU of block hashes;
- ``prefill.C.queued_requests`` / ``queued_tokens`` / ``wait_s`` / ``busy_fraction``: the
  scraped waiting and running gauges combined with the picker's own estimate of each
  instance's queue (every request it sends starts when the previous one ends and lasts the
  cost model's prefill time);
- ``channels.A->B.*``: configured metrics, else the link's nominal bandwidth and the
  picker's estimate of the KV transfers it caused;
- ``decode.C.*``: the scraped running, waiting and KV-usage gauges; the admission wait is
  estimated from the cost model's decode step when no slot is free;
- ``recent.ttft_ewma_s``: the decode instances' TTFT histogram means between scrapes.

An endpoint whose last good scrape is older than ``stale_after_s`` is *stale*: its metrics
are left out and it is not picked while its pool has fresh ones. When every endpoint of a
pool is stale the pool's scraped entries are ``null`` in the state, so the router's
fallback decides and its reason names them.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from prfaas_env.gateway.inventory import LEGACY_NAMES, Endpoint, Inventory
from prfaas_env.gateway.scrape import ScrapeResult, parse_selector, select
from prfaas_env.sim.bandwidth import GBPS
from prfaas_env.sim.costs import (
    MAX_PROMPT_TOKENS,
    CostTables,
    decode_step_time,
    kv_bytes,
    prefill_time,
)
from prfaas_env.sim.state import TTFT_EWMA_ALPHA

__all__ = ["Datastore", "EndpointState", "PrefixLRU"]

EWMA_WEIGHT = TTFT_EWMA_ALPHA  # weight of one completion in recent.ttft_ewma_s


class PrefixLRU:
    """Block hashes a cluster is believed to hold, least recently used first (capacity in
    blocks; 0 holds nothing)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def match(self, hashes: tuple[int, ...]) -> int:
        """Number of leading ``hashes`` held (no update)."""
        n = 0
        for h in hashes:
            if h not in self.blocks:
                break
            n += 1
        return n

    def touch(self, hashes: tuple[int, ...]) -> None:
        """Mark ``hashes`` most recently used, inserting missing ones (evicting the least
        recently used when full): the simulator's cache update at routing time."""
        if self.capacity <= 0:
            return
        blocks = self.blocks
        for h in hashes:
            if h in blocks:
                blocks.move_to_end(h)
            else:
                if len(blocks) >= self.capacity:
                    blocks.popitem(last=False)
                blocks[h] = None


@dataclass
class EndpointState:
    """One server's scraped metrics and the picker's own record of what it sent there.
    Times are the picker's monotonic clock, seconds."""

    endpoint: Endpoint
    waiting: float | None = None
    running: float | None = None
    kv_usage: float | None = None
    ttft_sum: float | None = None
    ttft_count: float | None = None
    scraped_at: float = -math.inf
    last_error: str | None = None
    failures: int = 0
    # prefill instances: (start, end, uncached tokens) of requests sent, by the estimate
    busy_until: float = 0.0
    assigned: deque[tuple[float, float, float]] = field(default_factory=deque)
    assigned_tokens: float = 0.0  # sum of the uncached tokens in ``assigned``
    last_routed: float = -math.inf
    # decode instances: estimated KV-ready times of requests sent, not yet visible
    pending: list[float] = field(default_factory=list)

    def fresh(self, now: float, stale_after_s: float) -> bool:
        return now - self.scraped_at <= stale_after_s


class LinkEstimate:
    """KV transfers the picker caused on one link direction, by its estimates: a transfer
    is on the link from ``start`` to ``end`` (picker clock, s) and its bytes drain linearly.
    Flows and bytes in flight are kept as running sums, so a query costs O(log n) however
    many transfers are outstanding."""

    def __init__(self) -> None:
        self.waiting: list[tuple[float, float, float]] = []  # heap of (start, end, bytes)
        self.live: list[tuple[float, float, float]] = []  # heap of (end, start, bytes)
        self.flows = 0
        self._a = 0.0  # sum of bytes * end / duration over live transfers
        self._b = 0.0  # sum of bytes / duration over live transfers

    def add(self, start: float, end: float, nbytes: float) -> None:
        heapq.heappush(self.waiting, (start, end, nbytes))

    def at(self, now: float) -> tuple[float, float]:
        """(bytes in flight, flows) at ``now``."""
        while self.waiting and self.waiting[0][0] <= now:
            start, end, nbytes = heapq.heappop(self.waiting)
            if end > now:
                heapq.heappush(self.live, (end, start, nbytes))
                d = max(end - start, 1e-9)
                self._a += nbytes * end / d
                self._b += nbytes / d
                self.flows += 1
        while self.live and self.live[0][0] <= now:
            end, start, nbytes = heapq.heappop(self.live)
            d = max(end - start, 1e-9)
            self._a -= nbytes * end / d
            self._b -= nbytes / d
            self.flows -= 1
        if not self.live:
            self._a = self._b = 0.0  # no drift from the running sums
        return max(self._a - now * self._b, 0.0), float(self.flows)


class Datastore:
    """Endpoints and their state for one inventory (see the module docstring).

    Args:
        inventory: the deployment.
        tables: the topology's cost tables (prefill and decode times, KV sizes).
        clock: the time source (monotonic seconds); tests pass their own.
    """

    def __init__(
        self, inventory: Inventory, tables: CostTables, clock: Any = time.monotonic
    ) -> None:
        self.inv = inventory
        self.topo = topo = inventory.topology
        self.tables = tables
        self.clock = clock
        self.settings = inventory.picker
        self.scale = inventory.time_scale
        self.states = {(e.address, e.role): EndpointState(e) for e in inventory.endpoints}
        self.by_url: dict[str, list[EndpointState]] = {}
        for st in self.states.values():
            self.by_url.setdefault(st.endpoint.metrics_url, []).append(st)
        self.cluster_index = {c.name: i for i, c in enumerate(topo.clusters)}
        self.lru = {c.name: PrefixLRU(c.prefix_cache_blocks) for c in topo.clusters}
        self.prefill_clusters = [topo.clusters[i].name for i in topo.prefill_index]
        self.decode_clusters = [topo.clusters[i].name for i in topo.decode_index]
        self.pools = {
            (c.name, role): [self.states[(e.address, role)] for e in inventory.pool(c.name, role)]
            for c in topo.clusters
            for role in ("prefill", "decode")
        }
        names = inventory.metric_names()
        self.metric = names
        self.wanted = set(names.values()) | {LEGACY_NAMES.get(n, n) for n in names.values()}
        # channels some route uses, by live-state name
        self.channel_names = [
            f"{topo.channels[c][1]}->{topo.channels[c][2]}" for c in topo.route_channels
        ]
        self.channel_of = dict(zip(self.channel_names, topo.route_channels, strict=True))
        self.channel_nominal = dict(zip(self.channel_names, topo.route_channel_gbps(), strict=True))
        self.channel_values: dict[str, dict[str, float | None]] = {
            n: {} for n in self.channel_names
        }
        self.channel_at: dict[str, float] = dict.fromkeys(self.channel_names, -math.inf)
        self.channel_error: dict[str, str | None] = dict.fromkeys(self.channel_names)
        self.channel_selectors: dict[str, dict[str, tuple[str, tuple]]] = {}
        for name, src in inventory.channels.items():
            sel = {}
            for key in ("bandwidth_gbps", "bytes_in_flight", "flows"):
                text = getattr(src, key)
                if text is not None:
                    sel[key] = parse_selector(text)
                    self.wanted.add(sel[key][0])
            self.channel_selectors[name] = sel
        self.transfers = {n: LinkEstimate() for n in self.channel_names}
        self.ttft_ewma = math.nan  # no completion seen yet (as the simulator starts)
        self.mean_uncached = 1024.0  # running mean of routed uncached tokens
        self.scrapes_ok = 0
        self.scrape_errors: dict[str, int] = {}

    # ---- scraping -------------------------------------------------------------------------
    def scrape_urls(self) -> list[str]:
        """Every URL to poll: the servers' metrics and the channels' sources."""
        urls = list(self.by_url)
        urls += [src.url for src in self.inv.channels.values()]
        return list(dict.fromkeys(urls))

    def on_scrape(self, r: ScrapeResult) -> None:
        """Store one scrape's result for every endpoint and channel it serves."""
        now = self.clock()
        if r.error is not None:
            self.scrape_errors[r.error.split(":")[0]] = (
                self.scrape_errors.get(r.error.split(":")[0], 0) + 1
            )
        else:
            self.scrapes_ok += 1
        for st in self.by_url.get(r.url, ()):
            if r.samples is None:
                st.failures += 1
                st.last_error = r.error
                continue
            m = self.metric
            waiting = select(r.samples, m["waiting"])
            running = select(r.samples, m["running"])
            if waiting is None or running is None or waiting < 0 or running < 0:
                st.failures += 1
                st.last_error = f"garbage: {m['waiting']} or {m['running']} missing or negative"
                continue
            kv = self._mean(r.samples, m["kv_usage"])
            if kv is None:
                kv = self._mean(r.samples, LEGACY_NAMES.get(m["kv_usage"], m["kv_usage"]))
            tsum, tcount = select(r.samples, m["ttft_sum"]), select(r.samples, m["ttft_count"])
            if st.endpoint.role == "decode" and tsum is not None and tcount is not None:
                self._ttft(st, tsum, tcount)
            st.waiting, st.running = waiting, running
            st.kv_usage = None if kv is None else min(max(kv, 0.0), 1.0)
            st.ttft_sum, st.ttft_count = tsum, tcount
            st.scraped_at, st.last_error, st.failures = now, None, 0
            if st.endpoint.role == "prefill" and waiting == 0 and running == 0:
                # an idle instance: forget what the estimate still has running there, unless
                # a request sent after the scrape began may not have arrived yet
                if r.at - self.settings.scrape_timeout_s > st.last_routed:
                    st.busy_until = min(st.busy_until, now)
                    st.assigned.clear()
                    st.assigned_tokens = 0.0
            if st.endpoint.role == "decode" and st.pending:
                seen = now - self.settings.scrape_interval_s
                st.pending = [t for t in st.pending if t > seen]
        for name, src in self.inv.channels.items():
            if src.url != r.url:
                continue
            if r.samples is None:
                self.channel_error[name] = r.error
                continue
            vals: dict[str, float | None] = {}
            for key, (metric, labels) in self.channel_selectors[name].items():
                v = select(r.samples, metric, labels)
                vals[key] = (
                    None if v is None else v * (src.scale if key == "bandwidth_gbps" else 1.0)
                )
            self.channel_values[name] = vals
            self.channel_at[name] = now
            self.channel_error[name] = None

    @staticmethod
    def _mean(samples: dict, name: str) -> float | None:
        vals = [s.value for s in samples.get(name, ()) if math.isfinite(s.value)]
        return sum(vals) / len(vals) if vals else None

    def _ttft(self, st: EndpointState, tsum: float, tcount: float) -> None:
        if st.ttft_sum is None or st.ttft_count is None:
            return
        n = tcount - st.ttft_count
        if n <= 0 or tsum < st.ttft_sum:
            return  # no completion since, or a restarted server (counters reset)
        mean = (tsum - st.ttft_sum) / n
        if math.isnan(self.ttft_ewma):  # the first completions seed the average, as in training
            self.ttft_ewma = mean
            return
        keep = (1.0 - EWMA_WEIGHT) ** n
        self.ttft_ewma = self.ttft_ewma * keep + mean * (1.0 - keep)

    # ---- readiness ------------------------------------------------------------------------
    def usable(self, cluster: str, role: str, now: float) -> list[EndpointState]:
        """Endpoints of a pool the picker may choose: the fresh ones, or every one when
        none is fresh (their metrics then read as missing)."""
        pool = self.pools[(cluster, role)]
        fresh = [st for st in pool if st.fresh(now, self.settings.stale_after_s)]
        return fresh or pool

    def pool_fresh(self, cluster: str, role: str, now: float) -> bool:
        return any(st.fresh(now, self.settings.stale_after_s) for st in self.pools[(cluster, role)])

    def all_scraped(self) -> bool:
        """Whether every endpoint has been scraped once (the picker's readiness)."""
        return all(st.scraped_at > -math.inf for st in self.states.values())

    # ---- estimates ------------------------------------------------------------------------
    def prefill_s(self, cluster: str, uncached: float, cached: float) -> float:
        """Cost-model prefill time on one instance of ``cluster``, deployment seconds."""
        log_t = self.tables.prefill_log_t[self.cluster_index[cluster]]
        return float(prefill_time(log_t, float(uncached), float(cached)))

    def kv_bytes(self, tokens: float) -> float:
        t = self.tables
        return float(
            kv_bytes(t.kv_fixed, t.kv_per_token, t.swa_per_token, t.swa_window, float(tokens))
        )

    def _instance_load(
        self, st: EndpointState, now: float, fresh: bool
    ) -> tuple[float, float, float, bool]:
        """(wait s, queued requests, queued tokens, busy) of one prefill instance."""
        q = st.assigned
        while q and q[0][1] <= now:
            st.assigned_tokens -= q.popleft()[2]
        own_wait = max(0.0, st.busy_until - now) * self.scale
        # one prefill at a time, in order: only the head can have started
        own_q = len(q)
        own_tok = st.assigned_tokens
        if q and q[0][0] <= now:
            own_q -= 1
            own_tok -= q[0][2]
        busy = own_wait > 0
        if not fresh or st.waiting is None:
            return own_wait, float(own_q), own_tok, busy
        extra = max(0.0, st.waiting - own_q)
        running = (st.running or 0.0) > 0
        unexplained = extra + (1.0 if running and not busy else 0.0)
        wait = max(
            own_wait, unexplained * self.prefill_s(st.endpoint.cluster, self.mean_uncached, 0.0)
        )
        return (
            wait,
            own_q + extra,
            own_tok + extra * self.mean_uncached,
            busy or running or extra > 0,
        )

    def choose_prefill(self, cluster: str, now: float) -> tuple[EndpointState, float]:
        """The instance of ``cluster`` that can start soonest (least estimated wait; first
        in file order on ties) and its wait, deployment seconds."""
        best, best_wait = None, math.inf
        stale = self.settings.stale_after_s
        for st in self.usable(cluster, "prefill", now):
            wait = self._instance_load(st, now, st.fresh(now, stale))[0]
            if wait < best_wait:
                best, best_wait = st, wait
        assert best is not None
        return best, best_wait

    def decode_ranking(self, cluster: str, now: float) -> list[EndpointState]:
        """Decode instances of ``cluster``, least loaded first (running + waiting scraped,
        plus requests sent there that the metrics cannot show yet; file order on ties)."""
        stale = self.settings.stale_after_s

        def load(st: EndpointState) -> float:
            # requests sent this long ago show in any fresh scrape, or never will (a server
            # whose metrics fail): forget them either way, so the list stays bounded
            if st.pending and st.pending[0] < now - stale:
                st.pending = [t for t in st.pending if t >= now - stale]
            seen = (st.running or 0.0) + (st.waiting or 0.0) if st.fresh(now, stale) else 0.0
            return seen + len(st.pending)

        return sorted(self.usable(cluster, "decode", now), key=load)

    # ---- the live state -------------------------------------------------------------------
    def live_state(
        self, input_tokens: int, hashes: tuple[int, ...], now: float | None = None
    ) -> dict[str, Any]:
        """The live state of one request (see the module docstring and docs/router.md)."""
        now = self.clock() if now is None else now
        bt = self.topo.block_tokens
        stale = self.settings.stale_after_s
        tokens = min(int(input_tokens), MAX_PROMPT_TOKENS)
        prefill: dict[str, Any] = {}
        for cname in self.prefill_clusters:
            pool = self.pools[(cname, "prefill")]
            fresh_pool = self.pool_fresh(cname, "prefill", now)
            loads = [self._instance_load(st, now, st.fresh(now, stale)) for st in pool]
            usable = [
                ld for st, ld in zip(pool, loads, strict=True) if st.fresh(now, stale)
            ] or loads
            entry: dict[str, Any] = {
                "cached_tokens": self.lru[cname].match(hashes) * bt,
                "wait_s": min(ld[0] for ld in usable),
            }
            if fresh_pool:
                entry["queued_requests"] = sum(ld[1] for ld in usable)
                entry["queued_tokens"] = sum(ld[2] for ld in usable)
                entry["busy_fraction"] = sum(1.0 for ld in usable if ld[3]) / len(usable)
            else:  # nothing measured: the router falls back and says so
                entry["queued_requests"] = entry["queued_tokens"] = entry["busy_fraction"] = None
            prefill[cname] = entry
        decode: dict[str, Any] = {}
        for cname in self.decode_clusters:
            c = self.topo.clusters[self.cluster_index[cname]]
            fresh = [st for st in self.pools[(cname, "decode")] if st.fresh(now, stale)]
            if not fresh:
                decode[cname] = dict.fromkeys(
                    ("free_slots", "kv_used", "admission_queue", "admission_wait_s")
                )
                continue
            running = sum(st.running or 0.0 for st in fresh)
            slots = c.max_batch * len(fresh)
            free = min(max(1.0 - running / slots, 0.0), 1.0)
            queue = sum(st.waiting or 0.0 for st in fresh)
            kvs = [st.kv_usage for st in fresh if st.kv_usage is not None]
            has_slot = any((st.running or 0.0) < c.max_batch for st in fresh) and queue == 0
            decode[cname] = {
                "free_slots": free,
                "kv_used": sum(kvs) / len(kvs) if kvs else None,
                "admission_queue": queue,
                "admission_wait_s": 0.0 if has_slot else self._admission_wait(c, len(fresh), queue),
            }
        channels: dict[str, Any] = {}
        for name in self.channel_names:
            channels[name] = self._channel(name, now)
        return {
            "request": {"input_tokens": max(tokens, 1)},
            "prefill": prefill,
            "channels": channels,
            "decode": decode,
            "recent": {"ttft_ewma_s": 0.0 if math.isnan(self.ttft_ewma) else self.ttft_ewma},
        }

    def _admission_wait(self, c: Any, instances: int, queue: float) -> float:
        """(queue + 1) / completions per second of ``instances`` full decode instances."""
        ci = self.cluster_index[c.name]
        out = self.settings.expected_output_tokens
        ctx = c.max_batch * (self.mean_uncached + out / 2)
        step = float(decode_step_time(self.tables.decode_log_t[ci], c.max_batch, ctx))
        rate = instances * c.max_batch / (out * step)
        return (queue + 1.0) / rate

    def _channel(self, name: str, now: float) -> dict[str, float | None]:
        fresh = now - self.channel_at[name] <= self.settings.stale_after_s
        sel = self.channel_selectors.get(name, {})
        vals = self.channel_values[name] if fresh else {}
        out: dict[str, float | None] = {}
        if "bandwidth_gbps" in sel:
            out["bandwidth_gbps"] = vals.get("bandwidth_gbps")
        else:
            out["bandwidth_gbps"] = self.channel_nominal[name]
        own_bytes, own_flows = self.transfers[name].at(now)
        out["bytes_in_flight"] = (
            vals.get("bytes_in_flight") if "bytes_in_flight" in sel else own_bytes
        )
        out["flows"] = vals.get("flows") if "flows" in sel else own_flows
        return out

    # ---- bookkeeping ----------------------------------------------------------------------
    def record(
        self,
        route: int,
        prefill: EndpointState,
        decode: EndpointState,
        input_tokens: int,
        hashes: tuple[int, ...],
        state: dict[str, Any],
        now: float,
    ) -> None:
        """Remember a routed request: the prefill cluster now holds its blocks, the prefill
        instance is busy for its prefill time, its KV is on the link (if it crosses one) and
        the decode instance will hold it when the KV is ready."""
        topo = self.topo
        r = topo.routes[route]
        pname = topo.clusters[r.prefill].name
        tokens = min(int(input_tokens), MAX_PROMPT_TOKENS)
        cached = min(self.lru[pname].match(hashes) * topo.block_tokens, tokens - 1)
        self.lru[pname].touch(hashes)
        unc = tokens - cached
        self.mean_uncached += 0.05 * (unc - self.mean_uncached)
        dur_s = self.prefill_s(pname, unc, cached)
        start = max(now, prefill.busy_until)
        end = start + dur_s / self.scale
        prefill.busy_until = end
        prefill.assigned.append((start, end, float(unc)))
        prefill.assigned_tokens += float(unc)
        prefill.last_routed = now
        ready = end
        if r.channel >= 0:
            name = f"{topo.channels[r.channel][1]}->{topo.channels[r.channel][2]}"
            kv = self.kv_bytes(tokens)
            ch = state["channels"].get(name, {})
            bw = ch.get("bandwidth_gbps") or self.channel_nominal[name]
            share = bw * GBPS / ((ch.get("flows") or 0.0) + 1.0)
            t_end = start + (kv / share + topo.channel_latency_s(r.channel)) / self.scale
            self.transfers[name].add(start, t_end, kv)
            ready = max(ready, t_end)
        decode.pending.append(ready)
