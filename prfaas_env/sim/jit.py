"""The compilation settings of every simulator function.

``compiled`` is numba's ``njit`` with an on-disk cache and without numba's reference-counting
runtime (``_nrt=False``). The simulator's compiled code never allocates: every array it
touches is created in Python and passed in, so reference counting buys nothing there, and it
cost about a third of the simulator's time (measured with perf: atomic increments and
decrements on every array taken out of the state tuples). Should a numba release stop
accepting the flag, the functions compile with the runtime instead: slower, same results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from numba import njit

F = TypeVar("F", bound=Callable[..., Any])


def _probe() -> dict[str, Any]:
    options: dict[str, Any] = {"cache": True, "_nrt": False}
    try:
        njit(**options)(lambda x: x + 1)(1)
    except Exception:  # an unknown flag: fall back to the default runtime
        options.pop("_nrt")
    return options


OPTIONS = _probe()


def compiled(fn: F) -> F:
    """Compile ``fn`` with the simulator's settings (see the module docstring)."""
    return njit(**OPTIONS)(fn)  # type: ignore[return-value]


def compiled_parallel(fn: F) -> F:
    """:func:`compiled` with numba's parallel loops (``prange`` runs on numba's threads)."""
    return njit(parallel=True, **OPTIONS)(fn)  # type: ignore[return-value]
