"""PrfaaSSuiteEnv: one environment whose every episode is a scenario drawn from a suite.

Domain randomisation for a policy that must route any topology of a suite: each reset draws
a scenario of the suite's train set (or held-out set), a load multiplier and, optionally, a
share of each link's bandwidth, all from the env's ``np_random``. Observations are in the
per-route form (:mod:`prfaas_env.observation.per_route`) padded to a fixed number of routes,
so a library that wants one observation space for all episodes (RLlib's env runners, a
vector env) gets one, whatever the topology. The per-route network
(:class:`prfaas_env.policies.route_scorer.RouteScorer`) scores rows, not positions, so it
does not care how many rows are padding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from prfaas_env.env.actions import check_action
from prfaas_env.env.single import PrfaaSEnv
from prfaas_env.errors import ConfigError
from prfaas_env.observation.per_route import GLOBAL_FEATURES, HIGH, ROUTE_FEATURES
from prfaas_env.suite import DEFAULT_SUITE, SPLITS, Suite, SuiteScenario, load_suite

DEFAULT_RATE_RANGE = (0.7, 1.15)  # load multipliers drawn per episode (of each file's rate)
SEED_HIGH = 2**63 - 1


def _range(value: Any, name: str, low: float, high: float | None) -> tuple[float, float]:
    """``(a, b)`` with ``low < a <= b`` (``<= high`` when given), or ValueError naming ``name``."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected two numbers (low, high), got {value!r}") from None
    top = np.inf if high is None else high
    if not (low < a <= b <= top):
        bound = f"{low} < low <= high" + ("" if high is None else f" <= {high}")
        raise ValueError(f"{name}: expected {bound}, got ({a!r}, {b!r})")
    return a, b


class PrfaaSSuiteEnv(gym.Env):
    """The MDP of :class:`~prfaas_env.env.vector.PrfaaSVectorEnv` on a scenario drawn per
    episode from a suite, in the per-route observation form padded to ``max_routes`` routes.

    **Episode start.** ``reset`` draws, from ``np_random``: a scenario (uniformly among
    ``scenarios``), a load multiplier ``m ~ U(rate_range)`` (arrivals at ``m`` x the
    scenario file's rate) and, with ``bandwidth_range``, one share ``U(bandwidth_range)``
    per link of the link's bandwidth (the link carries that share of what its bandwidth
    process draws, outages included); then it resets that scenario's env with a seed drawn
    from ``np_random``. ``options={"scenario": NAME, "rate_multiplier": M}`` fixes either
    (evaluation). One :class:`~prfaas_env.env.single.PrfaaSEnv` is built per scenario on its
    first episode and kept: later episodes change its rate and links, they do not rebuild it.

    **Observation space.** ``Dict(routes: Box(-1, 10, (max_routes, 18)), global: Box(-1, 10,
    (6,)), action_mask: Box(0, 1, (max_routes,)))``: the scenario's route rows in its
    ``action_meanings`` order, then zero rows; the mask is 1 for a usable route and 0 for a
    route whose link is down and for every padding row. ``global`` is unpadded (its
    ``routes`` entry counts the scenario's real routes).

    **Action space.** ``Discrete(max_routes)``: route ``a`` of the current scenario. A
    padding action (``a >=`` the scenario's route count; the mask never allows one) is
    carried out as route ``a mod routes`` and flagged with ``info["padding_action"]``, as a
    masked real route is still carried out (the simulator's rule).

    **Reward, episode end.** Each scenario file's own ``env:`` section (reward weights,
    ``max_decisions``), ``max_episode_steps`` overriding the length; truncation only.

    **Info**: ``scenario`` (name), ``rate_multiplier``, ``sim_time_s``; at an episode's end
    ``episode_summary`` (throughput, TTFT percentiles, SLO attainment, ... of the episode).

    Args:
        suite: a shipped suite's name or a suite folder (:func:`prfaas_env.suite.load_suite`).
        split: the set episodes are drawn from: ``train``, ``held_out`` or ``all``.
        scenarios: names of the scenarios to draw from (default every one of ``split``).
        rate_range: ``(low, high)`` load multipliers, ``0 < low <= high``.
        bandwidth_range: ``(low, high)`` shares of each link's bandwidth, in (0, 1]; None
            (default) keeps the links as the files describe them.
        max_routes: observation rows; default the most routes of any scenario of the suite
            (train and held-out), so every scenario of the suite fits the same spaces.
        max_episode_steps: overrides every file's ``env.max_decisions``.
        render_mode: ``"ansi"`` or None.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}

    def __init__(
        self,
        suite: str | Path = DEFAULT_SUITE,
        split: str = "train",
        scenarios: list[str] | tuple[str, ...] | None = None,
        rate_range: tuple[float, float] | list[float] = DEFAULT_RATE_RANGE,
        bandwidth_range: tuple[float, float] | list[float] | None = None,
        max_routes: int | None = None,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.suite: Suite = load_suite(suite)
        self.scenarios = _select(self.suite, split, scenarios)
        self.rate_range = _range(rate_range, "rate_range", 0.0, None)
        self.bandwidth_range = (
            None if bandwidth_range is None else _range(bandwidth_range, "bandwidth_range", 0, 1)
        )
        most = max(len(s.scenario.topology.routes) for s in self.suite.scenarios)
        needed = max(len(s.scenario.topology.routes) for s in self.scenarios)
        self.max_routes = most if max_routes is None else int(max_routes)
        if self.max_routes < needed:
            raise ValueError(
                f"max_routes: {max_routes!r} is fewer than the {needed} routes of the largest "
                f"scenario drawn ({', '.join(s.name for s in self.scenarios)})"
            )
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode: {render_mode!r} is not allowed; allowed: ansi, None")
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        f, g, r = len(ROUTE_FEATURES), len(GLOBAL_FEATURES), self.max_routes
        self.observation_space = gym.spaces.Dict(
            {
                "routes": gym.spaces.Box(-1.0, HIGH, (r, f), np.float32),
                "global": gym.spaces.Box(-1.0, HIGH, (g,), np.float32),
                "action_mask": gym.spaces.Box(0.0, 1.0, (r,), np.float32),
            }
        )
        self.action_space = gym.spaces.Discrete(r)
        self._envs: dict[str, PrfaaSEnv] = {}
        self._current: SuiteScenario | None = None
        self._env: PrfaaSEnv | None = None
        self._labels: list[str] = []
        self._rate = 1.0

    # ---- what is being played ----------------------------------------------------------------
    @property
    def scenario_names(self) -> list[str]:
        """Names of the scenarios episodes are drawn from."""
        return [s.name for s in self.scenarios]

    @property
    def current(self) -> SuiteScenario:
        """The scenario of the current episode (RuntimeError before the first reset)."""
        if self._current is None:
            raise RuntimeError("PrfaaSSuiteEnv: call reset() first")
        return self._current

    @property
    def rate_multiplier(self) -> float:
        """The current episode's load multiplier (of its scenario file's rate)."""
        return self._rate

    def env_of(self, name: str) -> PrfaaSEnv:
        """The (kept) single env of scenario ``name``, built on first use."""
        env = self._envs.get(name)
        if env is None:
            sc = self.suite.get(name)
            env = PrfaaSEnv(
                str(sc.path),
                render_mode=self.render_mode,
                max_episode_steps=self.max_episode_steps,
                observation_form="routes",
            )
            self._envs[name] = env
        return env

    def action_masks(self) -> NDArray[np.bool_]:
        """``[max_routes]`` True where the action is allowed now (padding never is)."""
        out = np.zeros(self.max_routes, np.bool_)
        if self._env is not None:
            m = self._env.action_masks()
            out[: m.size] = m
        return out

    # ---- reset and step ----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, NDArray[np.float32]], dict[str, Any]]:
        super().reset(seed=seed)
        rng = self.np_random
        opts = dict(options or {})
        unknown = set(opts) - {"scenario", "rate_multiplier"}
        if unknown:
            raise ValueError(
                f"options: unknown key(s) {sorted(unknown)}; allowed: rate_multiplier, scenario"
            )
        # every draw is made whether or not an option fixes it, so streams stay aligned
        pick = self.scenarios[int(rng.integers(len(self.scenarios)))]
        rate = float(rng.uniform(*self.rate_range))
        sc = self.suite.get(opts["scenario"]) if "scenario" in opts else pick
        if "rate_multiplier" in opts:
            rate = float(opts["rate_multiplier"])
        routes = len(sc.scenario.topology.routes)
        if routes > self.max_routes:
            raise ValueError(
                f"options: scenario {sc.name!r} has {routes} routes, more than max_routes "
                f"{self.max_routes}"
            )
        env = self.env_of(sc.name)
        env.sim.set_rate_multiplier(rate)
        if self.bandwidth_range is not None:
            links = len(sc.scenario.topology.links)
            env.sim.set_bandwidth_scale(rng.uniform(*self.bandwidth_range, size=links))
        obs, info = env.reset(seed=int(rng.integers(SEED_HIGH)))
        self._current, self._env, self._rate = sc, env, rate
        self._labels = list(env.action_meanings) + [
            f"padding (route {i % routes})" for i in range(routes, self.max_routes)
        ]
        return self._pad(obs), self._info(info)

    def step(
        self, action: Any
    ) -> tuple[dict[str, NDArray[np.float32]], float, bool, bool, dict[str, Any]]:
        if self._env is None:
            raise RuntimeError("PrfaaSSuiteEnv: call reset() before step()")
        a = check_action(action, self._labels)
        routes = len(self._env.action_meanings)
        obs, reward, terminated, truncated, info = self._env.step(a % routes)
        out = self._info(info)
        if a >= routes:
            out["padding_action"] = True
        return self._pad(obs), reward, terminated, truncated, out

    def _pad(self, obs: dict[str, NDArray[np.float32]]) -> dict[str, NDArray[np.float32]]:
        r = obs["routes"].shape[0]
        routes = np.zeros((self.max_routes, len(ROUTE_FEATURES)), np.float32)
        routes[:r] = obs["routes"]
        mask = np.zeros(self.max_routes, np.float32)
        mask[:r] = obs["action_mask"]
        return {"routes": routes, "global": obs["global"].copy(), "action_mask": mask}

    def _info(self, inner: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scenario": self.current.name if self._current else "",
            "rate_multiplier": self._rate,
            "sim_time_s": inner["sim_time_s"],
        }
        if "episode_summary" in inner:
            out["episode_summary"] = inner["episode_summary"]
        return out

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._env is None:
            return None
        head = f"scenario {self.current.name} at rate x{self._rate:.3f}"
        return head + "\n" + (self._env.render() or "")


def _select(
    suite: Suite, split: str, names: list[str] | tuple[str, ...] | None
) -> tuple[SuiteScenario, ...]:
    """The scenarios of ``split`` (``train``, ``held_out`` or ``all``), or those named."""
    allowed = (*SPLITS, "all")
    if split not in allowed:
        raise ConfigError(f"split: {split!r} is not allowed; allowed: {', '.join(allowed)}")
    pool = suite.scenarios if split == "all" else getattr(suite, split)
    if names is None:
        return tuple(pool)
    if isinstance(names, str) or not names:
        raise ConfigError(f"scenarios: expected a non-empty list of names, got {names!r}")
    by_name = {s.name: s for s in pool}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(
            f"scenarios: {', '.join(map(repr, missing))} not in the {split} set of suite "
            f"{suite.name!r}; it has: {', '.join(by_name)}"
        )
    return tuple(by_name[n] for n in names)
