"""The compilation settings of every simulator function.

``compiled`` is numba's ``njit`` with an on-disk cache and without numba's reference-counting
runtime (``_nrt=False``). The simulator's compiled code never allocates: every array it
touches is created in Python and passed in, so reference counting buys nothing there, and it
cost about a third of the simulator's time (measured with perf: atomic increments and
decrements on every array taken out of the state tuples). Should a numba release stop
accepting the flag, the functions compile with the runtime instead: slower, same results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
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


def _drop_stale_cache() -> None:
    """Delete compiled functions cached from other versions of this package's sources.

    numba checks a cached function against its own file only, so a change to a function it
    calls in another file (say, cache.py under kernel.py) would otherwise leave a stale
    compiled copy in use. A digest of every source file of the package keys the cache.
    """
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for f in sorted(here.glob("*.py")):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    cache = here / "__pycache__"
    stamp = cache / "numba-sources.sha256"
    try:
        if stamp.is_file() and stamp.read_text() == digest.hexdigest():
            return
        for f in cache.glob("*.nb[ic]"):
            f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest.hexdigest())
    except OSError:  # a read-only install: numba then caches in the user's cache folder
        pass


_drop_stale_cache()


def compiled(fn: F) -> F:
    """Compile ``fn`` with the simulator's settings (see the module docstring)."""
    return njit(**OPTIONS)(fn)  # type: ignore[return-value]


def compiled_inline(fn: F) -> F:
    """:func:`compiled`, inlined into its callers by numba (the event loop's helpers that
    take the state tuples: a call that is not inlined passes each array of its tuple
    arguments separately, see :mod:`prfaas_env.sim.kernel`)."""
    return njit(inline="always", **OPTIONS)(fn)  # type: ignore[return-value]


def compiled_parallel(fn: F) -> F:
    """:func:`compiled` with numba's parallel loops (``prange`` runs on numba's threads)."""
    return njit(parallel=True, **OPTIONS)(fn)  # type: ignore[return-value]


def entry_point(dispatcher: Any, args: tuple) -> Callable[..., Any]:
    """The compiled overload of ``dispatcher`` for ``args`` (compiling it if needed),
    callable without re-dispatch.

    Calling a compiled function through its dispatcher types every argument on every call
    (about 20 µs for the simulator's ~150 arrays, a few µs for a handful); when the argument
    types never change between calls, the overload is resolved once.
    """
    sig = tuple(dispatcher.typeof_pyval(a) for a in args)
    if sig not in dispatcher.overloads:
        dispatcher.compile(sig)
    return dispatcher.overloads[sig].entry_point
