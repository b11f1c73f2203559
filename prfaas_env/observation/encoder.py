"""The observation: what a router knows when a request arrives, and its encoding.

One code path serves the environment and a deployed router: a *view* (plain arrays in physical
units, leading dimension = env, laid out in the encoder's columns) is filled either by the
simulator (:mod:`prfaas_env.sim.view`, finished by
:class:`~prfaas_env.observation.simulated.SimObserver`) or from live cluster state
(:class:`~prfaas_env.observation.live.LiveState`), and :class:`ObservationEncoder` turns it
into the float32 vector a policy reads. Every entry is listed by
:meth:`ObservationEncoder.features` with its meaning, unit and normalisation
(docs/environment.md prints the table for the default scenario).

Normalisations map each quantity to a stable range: token counts ``log1p(x) / log1p(2^18)``
(0..1), request counts ``log1p(x) / log1p(1024)``, seconds ``log1p(x) / log1p(600)``, bytes
``log1p(x / 1 GB) / log1p(100)``, bandwidth as a fraction of the link's nominal bandwidth,
fractions as they are; every entry is then clipped to [0, 10]. Nothing in a view comes from
the future: the pending request's output length is not known to a router, so the view
carries the workload's mean instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from prfaas_env.observation.derive import Columns, normalise
from prfaas_env.sim.costs import MAX_PROMPT_TOKENS
from prfaas_env.sim.jit import entry_point
from prfaas_env.sim.topology import Topology

OBS_HIGH = 10.0  # every entry is clipped to [0, OBS_HIGH] (normalised values sit near 0..1)
_TOKENS = math.log1p(MAX_PROMPT_TOKENS)
_COUNT = math.log1p(1024)
_SECONDS = math.log1p(600)
_BYTES = math.log1p(100)


@dataclass(frozen=True)
class Feature:
    """One entry of the observation vector."""

    name: str
    meaning: str
    unit: str
    normalisation: str


# (view key, meaning, unit, normaliser name) per group; the group decides the entity axis.
_REQUEST = (
    ("input_tokens", "prompt length of the arriving request", "tokens", "tokens"),
    ("expected_output_tokens", "mean output length of the workload", "tokens", "tokens"),
)
_PREFILL = (
    ("cached_tokens", "prompt tokens already in this cluster's prefix cache", "tokens", "tokens"),
    ("uncached_tokens", "prompt tokens this cluster would compute", "tokens", "tokens"),
    (
        "prefill_s",
        "unloaded prefill time of those uncached tokens on one instance (cost model)",
        "s",
        "seconds",
    ),
    ("queued_requests", "requests waiting to start prefill", "requests", "count"),
    ("queued_tokens", "uncached tokens waiting to start prefill", "tokens", "tokens"),
    ("wait_s", "time until the least-loaded instance is free", "s", "seconds"),
    ("busy_fraction", "share of prefill instances busy now", "fraction", "identity"),
)
_CHANNEL = (
    ("bandwidth", "usable bandwidth as last measured", "fraction of nominal", "identity"),
    ("bytes_in_flight", "KV bytes still to send", "bytes", "bytes"),
    ("flows", "concurrent KV transfers", "transfers", "count"),
    (
        "transfer_s",
        "this request's KV alone at a fair share of the measured bandwidth, plus half the RTT",
        "s",
        "seconds",
    ),
)
_DECODE = (
    ("free_slots", "free decode slots over all slots", "fraction", "identity"),
    ("kv_used", "KV memory reserved over capacity", "fraction", "identity"),
    ("admission_queue", "requests with KV ready waiting for a slot", "requests", "count"),
    ("admission_wait_s", "time until a slot frees up (0 when one is free)", "s", "seconds"),
)
_ROUTE = (
    (
        "estimated_ttft_s",
        "prefill wait + unloaded prefill + KV transfer of this request on this route",
        "s",
        "seconds",
    ),
)
_SCALAR_GROUPS = ("request", "recent")  # one value per env (view entries are [env])
_RECENT = (("ttft_ewma_s", "moving average of recent TTFT (weight 0.05)", "s", "seconds"),)
# (divisor, scale) of each log normaliser: log1p(max(x, 0) / divisor) / scale
_LOG_FORM = {
    "tokens": (1.0, _TOKENS),
    "count": (1.0, _COUNT),
    "seconds": (1.0, _SECONDS),
    "bytes": (1e9, _BYTES),
}
_NORMALISERS = {  # how each normaliser is written in the feature table
    "tokens": "log1p(x) / log1p(262144)",
    "count": "log1p(x) / log1p(1024)",
    "seconds": "log1p(x) / log1p(600)",
    "bytes": "log1p(x / 1e9) / log1p(100)",
    "identity": "none",
}


class ObservationEncoder:
    """Encodes views of a topology's state into float32 vectors (see the module docstring).

    Entity order: prefill clusters (clusters with a prefill pool) in topology order, directed
    channels in topology order, PD clusters in topology order, routes in action order.
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        cl = topology.clusters
        self.prefill_clusters = [cl[i].name for i in topology.prefill_index]
        self.decode_clusters = [cl[i].name for i in topology.decode_index]
        # only channels some route uses carry information for the decision
        self.channel_index = list(topology.route_channels)
        self.channels = [
            f"{topology.channels[i][1]}->{topology.channels[i][2]}" for i in self.channel_index
        ]
        self._groups = (
            ("request", _REQUEST, [""]),
            ("prefill", _PREFILL, self.prefill_clusters),
            ("channel", _CHANNEL, self.channels),
            ("decode", _DECODE, self.decode_clusters),
            ("route", _ROUTE, topology.route_labels()),
            ("recent", _RECENT, [""]),
        )
        self._scalar_keys: set[str] = set()
        self._normalise: Callable[..., None] | None = None  # compiled entry, resolved once
        self._build_layout()

    def features(self) -> list[Feature]:
        """Every entry of the vector, in order."""
        out = []
        for group, spec, entities in self._groups:
            for entity in entities:
                for key, meaning, unit, norm in spec:
                    name = f"{group}.{key}" if not entity else f"{group}[{entity}].{key}"
                    out.append(Feature(name, meaning, unit, _NORMALISERS[norm]))
        return out

    @property
    def size(self) -> int:
        """Length of the observation vector."""
        return self._width

    def _build_layout(self) -> None:
        """Column positions of every view key and of every normaliser (computed once)."""
        layout: list[tuple[str, int, slice]] = []
        by_norm: dict[str, list[int]] = {}
        offset = 0
        for group, spec, entities in self._groups:
            width, count = len(spec), len(entities)
            for k, (key, *_, norm) in enumerate(spec):
                # entity-major within a group: a key's columns are `width` apart
                first = offset + k
                layout.append((key, count, slice(first, first + width * count, width)))
                by_norm.setdefault(norm, []).extend(first + width * i for i in range(count))
                if group in _SCALAR_GROUPS:
                    self._scalar_keys.add(key)
            offset += width * count
        self._layout = layout
        self._slices = {key: sel for key, _, sel in layout}
        # every log normaliser is log1p(max(x, 0) / divisor) / scale; identity columns pass
        log_cols = np.zeros(offset, np.bool_)
        divisor = np.ones(offset)
        scale = np.ones(offset)
        for norm, cols in by_norm.items():
            if norm != "identity":
                log_cols[cols] = True
                divisor[cols], scale[cols] = _LOG_FORM[norm]
        self._log = (log_cols, divisor, scale)
        self._width = offset

    def column(self, key: str) -> slice:
        """The columns of view entry ``key`` in the layout :meth:`encode` writes (one per
        entity, as a slice; request and recent entries have one column)."""
        return self._slices[key]

    def columns(self) -> dict[str, tuple[int, int]]:
        """``{view key: (first column, step between entities)}`` for every entry (the form
        :meth:`prfaas_env.sim.engine.VecSimulator.enable_view` takes)."""
        return {key: (sel.start, sel.step) for key, sel in self._slices.items()}

    def derive_columns(self) -> Columns:
        """Where :mod:`prfaas_env.observation.derive` finds the entries it reads and writes."""

        def span(key: str) -> tuple[int, int, int]:
            sel = self._slices[key]
            return (sel.start, sel.stop, sel.step)

        return Columns(
            length=span("input_tokens"),
            cached=span("cached_tokens"),
            wait_s=span("wait_s"),
            flows=span("flows"),
            uncached=span("uncached_tokens"),
            prefill_s=span("prefill_s"),
            bandwidth=span("bandwidth"),
            transfer_s=span("transfer_s"),
            estimated_ttft_s=span("estimated_ttft_s"),
        )

    @property
    def log_form(self) -> tuple[NDArray[np.bool_], NDArray[np.float64], NDArray[np.float64]]:
        """Per column: whether it is log-normalised, its divisor and its scale (the
        arguments :func:`~prfaas_env.observation.derive.normalise` takes)."""
        return self._log

    def view_of(self, values: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
        """The view whose entries are the columns of ``values`` (``[n, size]`` in physical
        units, laid out as :meth:`encode` lays them out); entries share its memory."""
        return {
            key: values[:, sel.start] if key in self._scalar_keys else values[:, sel]
            for key, sel in self._slices.items()
        }

    def encode(self, view: dict[str, NDArray]) -> NDArray[np.float32]:
        """``[env, size]`` float32 observations from a view (arrays keyed by view entry in
        physical units; request and recent entries ``[env]``, the others ``[env, entities]``)."""
        n = np.shape(view["input_tokens"])[0]
        out = np.empty((n, self._width))
        for key, count, sel in self._layout:
            a = view[key]
            if type(a) is not np.ndarray:
                a = np.asarray(a, dtype=np.float64)
            if a.ndim == 1:
                a = a[:, None]
            if a.shape[1] != count:
                raise ValueError(f"view[{key!r}]: expected {count} entities, got {a.shape[1]}")
            out[:, sel] = a
        return self.normalise(out)

    def normalise(self, values: NDArray[np.float64]) -> NDArray[np.float32]:
        """``[n, size]`` float32 observations from the same entries in physical units, already
        in the encoder's columns (see :meth:`column`): each column's normaliser, then a clip
        to [0, OBS_HIGH] (NaN and -inf give 0, +inf gives OBS_HIGH)."""
        if values.dtype != np.float64 or values.ndim != 2 or values.shape[1] != self._width:
            raise ValueError(
                f"normalise: expected float64 values of shape [n, {self._width}], got "
                f"{values.dtype} of shape {values.shape}"
            )
        values = np.ascontiguousarray(values)
        out = np.empty(values.shape, np.float32)
        args = (values, *self._log, OBS_HIGH, out)
        if self._normalise is None:
            self._normalise = entry_point(normalise, args)
        self._normalise(*args)
        return out
