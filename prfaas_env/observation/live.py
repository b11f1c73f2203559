"""Live cluster state as plain data, turned into the view the simulator gives a policy.

A deployed router does not see the simulator: it sees metrics that serving engines and the
network already export. :class:`LiveState` defines that input as JSON-like data (one mapping
per routing decision) and turns it into the entries of the view the simulator writes
(:mod:`prfaas_env.sim.view`), laid out in the observation encoder's columns (:class:`Parsed`;
the view itself is built on demand). The modelled entries (uncached tokens, prefill time,
transfer time, estimated TTFT) and the mask come from the same compiled functions and cost
tables the environment uses (:mod:`prfaas_env.observation.derive`); the observation is then
the environment's own :class:`~prfaas_env.observation.encoder.ObservationEncoder`
normalisation.

State layout (``STATE_FORMAT`` 1; every number is >= 0; units in the key names)::

    {
      "request":  {"input_tokens": 12000, "expected_output_tokens": 1024},
      "prefill":  {"<cluster>": {"cached_tokens", "queued_requests", "queued_tokens",
                                 "wait_s", "busy_fraction"}},
      "channels": {"<from datacenter>-><to datacenter>":
                                {"bandwidth_gbps", "bytes_in_flight", "flows"}},
      "decode":   {"<cluster>": {"free_slots", "kv_used", "admission_queue",
                                 "admission_wait_s"}},
      "recent":   {"ttft_ewma_s": 2.1}
    }

``request.input_tokens`` is required: a whole number of tokens in [1, 262144] (the range the
cost tables cover). Every other metric may be missing or ``null``, or invalid (not a finite
number, negative, above 2^53, or a fraction above 1): it is then replaced by its default
(:data:`DEFAULTS`) and reported in :attr:`Parsed.problems`, so a router can fall back to a
heuristic. ``expected_output_tokens`` is optional and silent when absent: it defaults to the
workload mean the policy was trained with (a constant in training). Keys this topology does
not have are ignored here (the JSON Schema refuses them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env.observation.derive import derive_params, place
from prfaas_env.observation.encoder import ObservationEncoder
from prfaas_env.observation.routes import RouteTable
from prfaas_env.sim.costs import MAX_PROMPT_TOKENS, CostTables, tables_for
from prfaas_env.sim.jit import entry_point
from prfaas_env.sim.topology import Topology

STATE_FORMAT = 1

# state key -> (view key, meaning, what a real deployment reads it from)
PREFILL_INPUTS: dict[str, tuple[str, str]] = {
    "cached_tokens": (
        "cached_tokens",
        "prefix-cache match of this prompt in the cluster, tokens (Dynamo KV indexer overlap "
        "blocks x block size; llm-d prefix-cache scorer; SGLang radix-tree match length)",
    ),
    "queued_requests": (
        "queued_requests",
        "requests waiting to start prefill, summed over the cluster's prefill instances "
        "(vLLM vllm:num_requests_waiting; SGLang sglang:num_queue_reqs)",
    ),
    "queued_tokens": (
        "queued_tokens",
        "uncached prompt tokens of those waiting requests (Dynamo active_prefill_tokens)",
    ),
    "wait_s": (
        "wait_s",
        "seconds until the least-loaded prefill instance is free (router's estimate from its "
        "running and queued prefill work)",
    ),
    "busy_fraction": (
        "busy_fraction",
        "share of prefill instances running a prefill now (vllm:num_requests_running > 0)",
    ),
}
CHANNEL_INPUTS: dict[str, tuple[str, str]] = {
    "bandwidth_gbps": (
        "bandwidth",
        "usable bandwidth of the link in this direction as last measured, Gbps (link "
        "monitoring: probes or NIC counters); 0 means the link is down",
    ),
    "bytes_in_flight": (
        "bytes_in_flight",
        "KV bytes queued or in transit on the link (KV transfer engine statistics, e.g. "
        "Mooncake Transfer Engine or NIXL)",
    ),
    "flows": ("flows", "concurrent KV transfers on the link (KV transfer engine statistics)"),
}
DECODE_INPUTS: dict[str, tuple[str, str]] = {
    "free_slots": (
        "free_slots",
        "free decode slots over all slots: 1 - running sequences / (max_num_seqs x "
        "instances) (vllm:num_requests_running)",
    ),
    "kv_used": (
        "kv_used",
        "KV-cache memory in use over capacity, mean over decode instances "
        "(vllm:kv_cache_usage_perc; SGLang sglang:token_usage)",
    ),
    "admission_queue": (
        "admission_queue",
        "requests whose KV has arrived, waiting for a decode slot (vllm:num_requests_waiting "
        "on decode instances)",
    ),
    "admission_wait_s": (
        "admission_wait_s",
        "seconds until a decode slot frees up, 0 when one is free (router's estimate)",
    ),
}
REQUEST_INPUTS: dict[str, tuple[str, str]] = {
    "input_tokens": ("input_tokens", "prompt length after tokenisation, tokens (required)"),
    "expected_output_tokens": (
        "expected_output_tokens",
        "expected output length, tokens (default: the training workload's mean; e.g. the "
        "running mean of vllm:request_generation_tokens)",
    ),
}
RECENT_INPUTS: dict[str, tuple[str, str]] = {
    "ttft_ewma_s": (
        "ttft_ewma_s",
        "moving average (weight 0.05 per completion) of observed TTFT, s "
        "(from vllm:time_to_first_token_seconds)",
    ),
}
# view entries a router derives rather than reads (with how)
DERIVED: dict[str, str] = {
    "uncached_tokens": "input_tokens - min(cached_tokens, input_tokens - 1)",
    "prefill_s": "cost-model prefill time of the uncached tokens after the cached ones on one "
    "instance of the cluster (the simulator's cost tables)",
    "transfer_s": "KV bytes of the prompt / (bandwidth / (flows + 1)) + half the link RTT",
    "estimated_ttft_s": "wait_s + prefill_s (+ transfer_s across datacenters), per route",
    "bandwidth": "bandwidth_gbps / the link's nominal Gbps",
}
# value used when a metric is missing (the decision then comes from the fallback)
DEFAULTS: dict[str, float] = {
    "cached_tokens": 0.0,
    "queued_requests": 0.0,
    "queued_tokens": 0.0,
    "wait_s": 0.0,
    "busy_fraction": 0.0,
    "bytes_in_flight": 0.0,
    "flows": 0.0,
    "free_slots": 1.0,
    "kv_used": 0.0,
    "admission_queue": 0.0,
    "admission_wait_s": 0.0,
    "ttft_ewma_s": 0.0,
    # bandwidth_gbps defaults to the link's nominal bandwidth
}
_GROUPS = ("prefill", "channels", "decode")
_FRACTIONS = ("busy_fraction", "free_slots", "kv_used")
_MAX_EXACT = float(2**53)  # the largest metric accepted (integers are exact up to here)
_HIGH = dict.fromkeys(_FRACTIONS, 1.0)  # metrics with a smaller upper bound


class LiveStateError(ValueError):
    """A state that cannot be routed at all (no usable ``request.input_tokens``)."""


@dataclass(frozen=True)
class Parsed:
    """States turned into observation inputs: ``values`` ``[state, encoder size]`` (every
    view entry in physical units, in the observation encoder's columns), the action mask
    ``[state, action]``, and per state the list of missing or invalid inputs. ``view`` is
    the same entries keyed by name (sharing ``values``' memory)."""

    values: NDArray[np.float64]
    mask: NDArray[np.bool_]
    problems: list[list[str]]
    encoder: ObservationEncoder = field(repr=False)

    @cached_property
    def view(self) -> dict[str, NDArray[np.float64]]:
        return self.encoder.view_of(self.values)

    def observation(self) -> NDArray[np.float32]:
        """``[state, encoder size]`` float32 observations (the encoder's normalisation)."""
        return self.encoder.normalise(self.values)


class LiveState:
    """Converts live states (see the module docstring) of one topology to observation inputs
    (:meth:`parse`) and views back to states (:meth:`state`).

    Args:
        topology: the deployment's topology (cluster, datacenter and link names must match
            the state's keys).
        expected_output_tokens: default for ``request.expected_output_tokens``.
        admission_control: whether the action list ends with ``reject`` (always allowed).
        tables: the topology's cost tables (built from its cost models when not given).
    """

    def __init__(
        self,
        topology: Topology,
        expected_output_tokens: float,
        admission_control: bool = False,
        tables: CostTables | None = None,
    ) -> None:
        self.topology = topology
        self.encoder = ObservationEncoder(topology)
        self.expected_output_tokens = float(expected_output_tokens)
        self.admission_control = admission_control
        self._nominal_gbps = np.array(topology.route_channel_gbps())
        if tables is None:
            tables = tables_for(topology)
        self.routes = RouteTable.from_topology(topology, admission_control)
        self.entities = {
            "prefill": list(self.encoder.prefill_clusters),
            "channels": list(self.encoder.channels),
            "decode": list(self.encoder.decode_clusters),
        }
        self.inputs = {
            "request": REQUEST_INPUTS,
            "prefill": PREFILL_INPUTS,
            "channels": CHANNEL_INPUTS,
            "decode": DECODE_INPUTS,
            "recent": RECENT_INPUTS,
        }
        # every entity metric in reading order: (group, entity, state key, default, upper
        # bound); where each number read goes is in self._dest (see observe.place)
        self._reads: list[tuple[str, str, str, float, float]] = []
        c = self.encoder.column
        dest = [c(k).start for k in ("input_tokens", "expected_output_tokens", "ttft_ewma_s")]
        for group in _GROUPS:
            for j, name in enumerate(self.entities[group]):
                for key, (view_key, _) in self.inputs[group].items():
                    if key == "bandwidth_gbps":
                        default = float(self._nominal_gbps[j])
                        dest.append(-1 - j)
                    else:
                        default = DEFAULTS[key]
                        dest.append(c(view_key).start + j * c(view_key).step)
                    self._reads.append((group, name, key, default, _HIGH.get(key, _MAX_EXACT)))
        self._dest = np.array(dest, np.int64)
        self._columns = self.encoder.derive_columns()
        self._params = derive_params(topology, tables)
        self._place: Callable[..., None] | None = None  # compiled entry, resolved once

    @property
    def num_actions(self) -> int:
        return self.routes.num_actions

    # ---- state -> view ------------------------------------------------------------------
    def parse(self, states: Sequence[Mapping[str, Any]]) -> Parsed:
        """Observation inputs, masks and problems of ``states`` (LiveStateError when a state
        has no usable ``request.input_tokens``; the message names the state's index)."""
        n = len(states)
        problems: list[list[str]] = [[] for _ in range(n)]
        nch = len(self.entities["channels"])
        # per state: input tokens, expected output tokens, TTFT average, then self._reads
        flat: list[float] = []
        for i, st in enumerate(states):
            if not _is_mapping(st):
                raise LiveStateError(f"state {i}: expected a mapping, got {type(st).__name__}")
            req = st.get("request")
            tokens = req.get("input_tokens") if _is_mapping(req) else None
            if not _is_prompt_length(tokens):
                raise LiveStateError(
                    f"state {i}: request.input_tokens must be a whole number of tokens in "
                    f"[1, {MAX_PROMPT_TOKENS}], got {tokens!r}"
                )
            out_tokens = req.get("expected_output_tokens")
            flat.append(tokens)
            # optional and silent when absent: training used the workload's constant mean
            flat.append(
                self.expected_output_tokens
                if out_tokens is None
                else self._metric(
                    req,
                    "expected_output_tokens",
                    self.expected_output_tokens,
                    "request",
                    problems[i],
                )
            )
            flat.append(
                self._metric(
                    st.get("recent"), "ttft_ewma_s", DEFAULTS["ttft_ewma_s"], "recent", problems[i]
                )
            )
            self._read(st, flat, problems[i])
        read = np.array(flat, np.float64).reshape(n, self._dest.size)
        values = np.zeros((n, self.encoder.size))
        mask = np.empty((n, self.routes.num_actions), np.bool_)
        args = (
            self._params,
            self._columns,
            read,
            self._dest,
            values,
            np.zeros((n, nch)),
            mask,
        )
        if self._place is None:
            self._place = entry_point(place, args)
        self._place(*args)  # every argument is a C-ordered array of fixed dtype and rank
        return Parsed(values, mask, problems, self.encoder)

    def _read(self, st: Mapping[str, Any], out: list[float], problems: list[str]) -> None:
        """Append every entity metric of one state to ``out`` (``self._reads`` order), with
        defaults in place of missing or invalid ones (each reported in ``problems``)."""
        group = name = ""
        section: Any = None
        e: Any = None
        for g, nm, key, default, high in self._reads:
            if g != group:
                group, section = g, st.get(g)
                if not _is_mapping(section):
                    section = None
                name = ""
            if nm != name:
                name = nm
                e = section.get(nm) if section is not None else None
            v = e.get(key) if type(e) is dict else None
            if (type(v) is float or type(v) is int) and 0 <= v <= high:
                out.append(v)  # the common case, without a call
            else:
                out.append(self._metric(e, key, default, group, problems, name))

    @staticmethod
    def _metric(
        section: Any, key: str, default: float, group: str, problems: list[str], name: str = ""
    ) -> float:
        where = f"{group}.{name}" if name else group
        if section is not None and not _is_mapping(section):
            problems.append(f"invalid {where}: expected a mapping, got {type(section).__name__}")
            return default
        value = section.get(key) if section is not None else None
        if value is None:
            problems.append(f"missing {where}.{key}")
            return default
        high = _HIGH.get(key, _MAX_EXACT)
        if not _is_number(value) or not 0 <= value <= high:
            text = f"{value!r}" if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
            problems.append(f"invalid {where}.{key}: {text} (expected a number in [0, {high:g}])")
            return default
        return float(value)

    def mask(self, view: Mapping[str, NDArray]) -> NDArray[np.bool_]:
        """``[state, action]`` allowed actions of a view: routes over a link whose measured
        bandwidth is 0 are not; reject (when present) always is (``observe.allowed``)."""
        return self.routes.allowed(view)

    # ---- view -> state ------------------------------------------------------------------
    def state(self, view: Mapping[str, NDArray], i: int) -> dict[str, Any]:
        """Row ``i`` of a view as a live state (the inverse of :meth:`parse` on its inputs);
        used to write golden files and to test the two directions against each other."""
        out: dict[str, Any] = {
            "request": {
                "input_tokens": round(float(view["input_tokens"][i])),
                "expected_output_tokens": float(view["expected_output_tokens"][i]),
            },
            "recent": {"ttft_ewma_s": float(view["ttft_ewma_s"][i])},
        }
        for group in _GROUPS:
            section: dict[str, Any] = {}
            for j, name in enumerate(self.entities[group]):
                entity = {}
                for key, (view_key, _) in self.inputs[group].items():
                    v = float(np.asarray(view[view_key])[i, j])
                    if key == "bandwidth_gbps":
                        v *= float(self._nominal_gbps[j])
                    entity[key] = v
                section[name] = entity
            out[group] = section
        return out

    # ---- documentation ------------------------------------------------------------------
    def feature_sources(self) -> list[dict[str, Any]]:
        """Per observation entry (encoder order): its name, meaning, unit and normalisation,
        and where a router gets it: ``state`` (the live-state path it is read from) with the
        engine ``metric`` behind it, or ``derived`` (how it is computed from other inputs)."""
        by_view = {
            group: {vk: (sk, desc) for sk, (vk, desc) in inputs.items()}
            for group, inputs in self.inputs.items()
        }
        group_of = {
            "request": "request",
            "prefill": "prefill",
            "channel": "channels",
            "decode": "decode",
            "recent": "recent",
            "route": "route",
        }
        out = []
        for i, f in enumerate(self.encoder.features()):
            head, key = f.name.rsplit(".", 1)
            group, _, entity = head.partition("[")
            entity = entity.rstrip("]")
            sgroup = group_of[group]
            entry: dict[str, Any] = {
                "index": i,
                "name": f.name,
                "meaning": f.meaning,
                "unit": f.unit,
                "normalisation": f.normalisation,
            }
            found = by_view.get(sgroup, {}).get(key)
            if found is not None:
                skey, desc = found
                parts = (sgroup, entity, skey)  # a JSON pointer (RFC 6901) into the state
                entry["state"] = "".join(
                    "/" + p.replace("~", "~0").replace("/", "~1") for p in parts if p
                )
                entry["metric"] = desc
                if key in DERIVED:  # read in other units and converted
                    entry["derived"] = DERIVED[key]
            else:
                entry["derived"] = DERIVED[key]
            out.append(entry)
        return out

    # ---- schema -------------------------------------------------------------------------
    def schema(self) -> dict[str, Any]:
        """JSON Schema (draft-07, which every common validator implements) of one state for
        this topology: the names of clusters and channels are fixed; each metric is a number
        in [0, 2^53] (fractions in [0, 1]) or null (null or absent: the decision comes from
        the fallback); the prompt length is an integer in [1, 262144]."""

        def metric(key: str, desc: str) -> dict[str, Any]:
            return {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": _HIGH.get(key, _MAX_EXACT),
                "description": desc,
            }

        def entity(inputs: dict[str, tuple[str, str]]) -> dict[str, Any]:
            return {
                "type": "object",
                "properties": {k: metric(k, d) for k, (_, d) in inputs.items()},
                "additionalProperties": False,
            }

        request = entity(REQUEST_INPUTS)
        request["properties"]["input_tokens"] = {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PROMPT_TOKENS,
            "description": REQUEST_INPUTS["input_tokens"][1],
        }
        request["required"] = ["input_tokens"]
        props: dict[str, Any] = {"request": request, "recent": entity(RECENT_INPUTS)}
        for group in _GROUPS:
            props[group] = {
                "type": "object",
                "properties": {n: entity(self.inputs[group]) for n in self.entities[group]},
                "additionalProperties": False,
            }
        return {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "title": "prfaas-env live state",
            "description": f"Cluster state at one routing decision (state format {STATE_FORMAT})",
            "type": "object",
            "properties": props,
            "required": ["request"],
            "additionalProperties": False,
        }


def _is_mapping(x: Any) -> bool:
    return type(x) is dict or isinstance(x, Mapping)


def _is_number(x: Any) -> bool:
    """A finite int or float (not a bool, not NaN or infinite)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    return abs(x) <= _MAX_EXACT if isinstance(x, int) else math.isfinite(x)


def _is_prompt_length(x: Any) -> bool:
    return _is_number(x) and 1 <= x <= MAX_PROMPT_TOKENS and float(x).is_integer()
