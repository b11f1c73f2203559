"""Observations of simulated envs: the simulator's view, finished by the router's own code.

The simulator writes the inputs a router reads (queues, caches, link and decode state; see
:mod:`prfaas_env.sim.view`) into a matrix laid out in the encoder's columns as part of each
step. :class:`SimObserver` turns that into what a policy reads with the same compiled
derivations a deployed router uses (:func:`prfaas_env.observation.derive.finish`): one call
per step. It never reads the simulator's state itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numba
import numpy as np
from numpy.typing import NDArray

from prfaas_env.observation.derive import (
    columns_array,
    derive_params,
    finish,
    finish_parallel,
)
from prfaas_env.observation.encoder import OBS_HIGH, ObservationEncoder
from prfaas_env.sim.costs import CostTables
from prfaas_env.sim.jit import entry_point
from prfaas_env.sim.scenario import Scenario
from prfaas_env.sim.view import SimView


class Simulator(Protocol):
    """What :class:`SimObserver` needs of a simulator (``VecSimulator`` has it)."""

    scenario: Scenario
    tables: CostTables
    num_envs: int
    parallel: bool

    def enable_view(
        self,
        columns: dict[str, tuple[int, int]],
        width: int,
        actions: int,
        staleness_s: float = 0.0,
        expected_output_tokens: float | None = None,
    ) -> SimView: ...


class SimObserver:
    """Observations and views of every env of ``sim`` at its pending decision.

    Args:
        sim: the simulator (its view is enabled here and refreshed by each of its steps).
        actions: number of actions (the routes, then reject when admission control is on).
        staleness_s: link bandwidth as measured at the last multiple of this many seconds
            (0: live), as a router polling a monitoring system would see it.
        expected_output_tokens: the output length the view reports (default: the
            workload's mean; a router does not know a request's own).
    """

    def __init__(
        self,
        sim: Simulator,
        actions: int,
        staleness_s: float = 0.0,
        expected_output_tokens: float | None = None,
    ) -> None:
        topo = sim.scenario.topology
        self.encoder = ObservationEncoder(topo)
        self.raw = sim.enable_view(
            self.encoder.columns(),
            self.encoder.size,
            actions,
            staleness_s,
            expected_output_tokens,
        )
        # split the rows over numba's threads when the simulator splits its envs
        self._threads = numba.get_num_threads() if sim.parallel else 1
        cols = self.encoder.derive_columns()
        self._args = (
            derive_params(topo, sim.tables),
            columns_array(cols) if self._threads > 1 else cols,
            self.raw.values,
            self.raw.bandwidth_bps,
            *self.encoder.log_form,
            OBS_HIGH,
        )
        self._extra = (self._threads,) if self._threads > 1 else ()
        self._finish: Callable[..., None] | None = None
        self._view = self.encoder.view_of(self.raw.values)

    @property
    def mask(self) -> NDArray[np.bool_]:
        """``[env, action]`` allowed actions now (a live array: copy it to keep it)."""
        return self.raw.mask

    @property
    def counters(self) -> NDArray[np.float64]:
        """``[env, counter]`` totals since each env's reset (:data:`prfaas_env.sim.view.COUNTERS`;
        a live array)."""
        return self.raw.counters

    def observe(self) -> NDArray[np.float32]:
        """``[env, encoder size]`` float32 observations of the pending decisions (a new
        array); completes :meth:`view` as a side effect."""
        out = np.empty(self.raw.values.shape, np.float32)
        if self._finish is None:
            fn = finish_parallel if self._threads > 1 else finish
            self._finish = entry_point(fn, (*self._args, out, *self._extra))
        self._finish(*self._args, out, *self._extra)
        return out

    def view(self) -> dict[str, Any]:
        """The view of the pending decisions in physical units (arrays keyed by view entry,
        sharing memory with the simulator's view matrix, so valid until the next step).
        Derived entries are current once :meth:`observe` has run for this step;
        :meth:`observe_view` does both."""
        return self._view

    def observe_view(self) -> dict[str, Any]:
        """:meth:`observe` (for its derived entries), then :meth:`view`."""
        self.observe()
        return self._view
