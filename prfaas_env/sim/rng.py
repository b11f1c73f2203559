"""Per-env random streams for compiled code.

Each simulated env owns one 64-bit SplitMix64 state (Steele, Lea and Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014), kept in a ``uint64`` array indexed by env, so
that env ``i`` draws the same numbers whether it runs alone or inside a batch. The state is
seeded from the env's NumPy ``Generator`` at reset, so every random number still derives from
the seed the user passed.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from prfaas_env.sim.jit import compiled

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2^-53


def seed_states(rng: np.random.Generator, count: int) -> NDArray[np.uint64]:
    """``count`` fresh stream states drawn from ``rng``."""
    return rng.integers(0, np.iinfo(np.uint64).max, size=count, dtype=np.uint64, endpoint=True)


@compiled
def next_u64(state: NDArray[np.uint64], i: int) -> np.uint64:
    """Advance stream ``i`` of ``state`` and return 64 random bits."""
    s = state[i] + _GOLDEN
    state[i] = s
    z = (s ^ (s >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@compiled
def uniform(state: NDArray[np.uint64], i: int) -> float:
    """Uniform on the open interval (0, 1)."""
    return (float(next_u64(state, i) >> _S11) + 0.5) * _INV53


@compiled
def exponential(state: NDArray[np.uint64], i: int) -> float:
    """Exponential with mean 1."""
    return -np.log(uniform(state, i))


@compiled
def normal(state: NDArray[np.uint64], i: int) -> float:
    """Standard normal (Box-Muller; one draw per call, the pair's second value is not kept)."""
    u1 = uniform(state, i)
    u2 = uniform(state, i)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


@compiled
def gamma(state: NDArray[np.uint64], i: int, shape: float) -> float:
    """Gamma with the given shape and scale 1 (Marsaglia and Tsang 2000; boosted below 1)."""
    boost = 1.0
    k = shape
    if k < 1.0:
        boost = uniform(state, i) ** (1.0 / k)
        k += 1.0
    d = k - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    while True:
        x = normal(state, i)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = uniform(state, i)
        if np.log(u) < 0.5 * x * x + d - d * v + d * np.log(v):
            return d * v * boost


@compiled
def truncated_lognormal(
    state: NDArray[np.uint64], i: int, mu: float, sigma: float, low: float, high: float
) -> float:
    """Log-normal(mu, sigma) conditioned on [low, high] (by rejection; the caller checks the
    interval holds enough mass)."""
    while True:
        x = np.exp(mu + sigma * normal(state, i))
        if low <= x <= high:
            return x


@compiled
def quantile_draw(
    state: NDArray[np.uint64], i: int, table: NDArray[np.float64], offset: int, n: int
) -> float:
    """A draw from the piecewise-linear quantile function ``table[1, offset:offset+n]`` at
    cumulative probabilities ``table[0, offset:offset+n]`` (0 first, 1 last, increasing)."""
    u = uniform(state, i)
    lo, hi = offset, offset + n - 1  # table[0, lo] <= u < table[0, hi]
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if table[0, mid] <= u:
            lo = mid
        else:
            hi = mid
    p0, p1 = table[0, lo], table[0, hi]
    return table[1, lo] + (table[1, hi] - table[1, lo]) * (u - p0) / (p1 - p0)
