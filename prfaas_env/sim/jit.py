"""The compilation settings of every compiled function, and where their machine code is cached.

``compiled`` is numba's ``njit`` with an on-disk cache and without numba's reference-counting
runtime (``_nrt=False``). The simulator's compiled code never allocates: every array it
touches is created in Python and passed in, so reference counting buys nothing there, and it
cost about a third of the simulator's time (measured with perf: atomic increments and
decrements on every array taken out of the state tuples). Should a numba release stop
accepting the flag, the functions compile with the runtime instead: slower, same results.

**Cache.** numba checks a cached function against its own source file only, so a change to a
function it calls from another file (say ``cache.py`` under ``kernel.py``) would leave a stale
compiled copy in use. The cache therefore lives in a folder named after a digest of every
source file with compiled code (:data:`COMPILED_SOURCES`): other
sources, another folder, and nothing is ever deleted. The folder is ``numba-<digest>`` in
the user cache (:func:`prfaas_env.user_cache.cache_root`: ``$PRFAAS_ENV_CACHE``, else
``~/.cache/prfaas-env``).
``python -m prfaas_env.sim.jit`` prints it; ``--prune`` deletes the folders of other
digests. Where none of these can be written, numba falls back to its own locations.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numba
from numba import njit

from prfaas_env.user_cache import cache_root

F = TypeVar("F", bound=Callable[..., Any])
PACKAGE = Path(__file__).resolve().parents[1]
# the package files whose code is compiled, or read by compiled code (constants, layouts)
COMPILED_SOURCES = ("sim/*.py", "observation/derive.py", "env/reward.py")


def _probe() -> dict[str, Any]:
    """``_nrt=False`` where this numba's CPU target takes the option (read from its option
    table, so importing compiles nothing)."""
    try:
        from numba.core.cpu import CPUTargetOptions
    except ImportError:  # a numba without that module: the default runtime
        return {}
    return {"_nrt": False} if hasattr(CPUTargetOptions, "_nrt") else {}


def sources_digest(package: Path = PACKAGE) -> str:
    """SHA-256 (first 16 hex digits) over the names and contents of the compiled sources of
    the package folder ``package``."""
    digest = hashlib.sha256()
    for pattern in COMPILED_SOURCES:
        for f in sorted(package.glob(pattern)):
            digest.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


OPTIONS = _probe()
CACHE_DIR = cache_root() / f"numba-{sources_digest()}"


@contextlib.contextmanager
def _cache_here() -> Iterator[None]:
    """numba picks a function's cache folder when it is decorated: point it at CACHE_DIR for
    the duration of one decoration (other numba users in the process are unaffected)."""
    previous = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(CACHE_DIR)
    try:
        yield
    finally:
        numba.config.CACHE_DIR = previous


def _jit(fn: F, **extra: Any) -> F:
    with _cache_here():
        return njit(cache=True, **extra, **OPTIONS)(fn)  # type: ignore[no-any-return]


def compiled(fn: F) -> F:
    """Compile ``fn`` with the simulator's settings (see the module docstring)."""
    return _jit(fn)


def compiled_inline(fn: F) -> F:
    """:func:`compiled`, inlined into its callers by numba (the event loop's helpers that
    take the state tuples: a call that is not inlined passes each array of its tuple
    arguments separately, see :mod:`prfaas_env.sim.kernel`)."""
    return _jit(fn, inline="always")


def compiled_parallel(fn: F) -> F:
    """:func:`compiled` with numba's parallel loops (``prange`` runs on numba's threads)."""
    return _jit(fn, parallel=True)


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


def prune() -> list[Path]:
    """Delete the cache folders of other source digests; returns what was deleted."""
    root = cache_root()
    gone = []
    for d in sorted(root.glob("numba-*")) if root.is_dir() else []:
        if d.is_dir() and d != CACHE_DIR:
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    return gone


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="Where compiled code is cached (see prfaas_env.sim.jit)."
    )
    ap.add_argument("--prune", action="store_true", help="delete the folders of other digests")
    args = ap.parse_args(argv)
    print(CACHE_DIR)
    if args.prune:
        for d in prune():
            print(f"deleted {d}")


if __name__ == "__main__":
    main()
