"""PrfaaSVectorEnv: a natively vectorised Gymnasium environment over the batched simulator.

The class docstring is the MDP's specification; docs/environment.md adds the full feature
table (with meanings) and examples.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from numpy.typing import NDArray

from prfaas_env.env.actions import check_actions
from prfaas_env.env.config import EnvConfig, resolve_config, with_observation_form
from prfaas_env.env.reward import REWARD_TERMS, Reward, account
from prfaas_env.observation.encoder import OBS_HIGH
from prfaas_env.observation.per_route import (
    GLOBAL_FEATURES,
    HIGH,
    ROUTE_FEATURES,
    RouteForm,
    route_features,
)
from prfaas_env.observation.simulated import SimObserver
from prfaas_env.sim.engine import RESULT_METRICS, VecSimulator, routes_from_actions

MODES = {m.value: m for m in AutoresetMode} | {m.name: m for m in AutoresetMode}
SUMMARY_KEYS = (*RESULT_METRICS, "cache_hit_fraction", "rejected", "completed")


def parse_autoreset(mode: AutoresetMode | str) -> AutoresetMode:
    """An AutoresetMode from itself or its name/value (error lists the allowed ones)."""
    if isinstance(mode, AutoresetMode):
        return mode
    if mode in MODES:
        return MODES[mode]
    raise ValueError(
        f"autoreset_mode: {mode!r} is not allowed; allowed: "
        f"{', '.join(m.name for m in AutoresetMode)}"
    )


class PrfaaSVectorEnv(VectorEnv):
    """``num_envs`` copies of a scenario, stepped together by one compiled call.

    **Description.** Requests arrive at a deployment of prefill-only clusters and
    prefill/decode (PD) clusters in several datacenters (the scenario file: topology,
    workload, links, SLOs; docs/simulator.md). At each request's arrival the agent picks its
    route: where it is prefilled and where it is decoded. KV caches cross datacenters over a
    shared, fluctuating link. One step routes one arriving request in every env; the
    simulator then advances each env to its next arrival.

    **Action space.** ``Discrete(routes [+ 1])``: the topology's valid (prefill cluster,
    decode cluster) pairs in ``action_meanings`` order (``"prefill->decode"``), then
    ``reject`` when ``env.admission_control`` is on. Inside the chosen cluster the request
    goes to the least-loaded prefill instance, and, once its KV is ready, to the decode
    instance with the fewest sequences. ``step`` takes one whole number per env in
    ``[0, actions)`` (a NumPy array of shape ``(num_envs,)``, integers or whole floats);
    anything else raises ValueError naming the env, the value and the allowed actions.

    **Action mask.** A route whose cross-datacenter link is down (live usable bandwidth 0)
    is not allowed; reject always is. ``action_masks()``, ``info["action_mask"]``, and with
    ``env.observation.dict`` the ``"action_mask"`` entry of a Dict observation. A masked
    action is still carried out (its KV waits for the link).

    **Observation space.** ``Box(0, 10, (features,), float32)`` (or a Dict of it and the
    mask): the request, then per prefill cluster, per channel some route uses, per decode
    cluster and per route, what a deployed router reads from live metrics and derives with
    the cost model, each normalised (token counts ``log1p(x) / log1p(2^18)``, seconds
    ``log1p(x) / log1p(600)``, counts ``log1p(x) / log1p(1024)``, bytes ``log1p(x / 1e9) /
    log1p(100)``, fractions as they are) and clipped to [0, 10]. With
    ``env.observation.form: routes`` it is instead ``Dict(routes: Box(-1, 10, (routes, 18)),
    global: Box(-1, 10, (6,)), action_mask)``: one row of scale-free features per route (times
    over the TTFT SLO, loads over capacity, lengths on a log scale;
    :mod:`prfaas_env.observation.per_route`), the same for any topology. The default scenario's
    features (``python -m prfaas_env.env.describe --compact``; a test keeps this table current):

    ===== ====================================== =================== ===========================
    index feature                                unit                normalisation
    ===== ====================================== =================== ===========================
    0     request.input_tokens                   tokens              log1p(x) / log1p(262144)
    1     request.expected_output_tokens         tokens              log1p(x) / log1p(262144)
    2     prefill[prfaas].cached_tokens          tokens              log1p(x) / log1p(262144)
    3     prefill[prfaas].uncached_tokens        tokens              log1p(x) / log1p(262144)
    4     prefill[prfaas].prefill_s              s                   log1p(x) / log1p(600)
    5     prefill[prfaas].queued_requests        requests            log1p(x) / log1p(1024)
    6     prefill[prfaas].queued_tokens          tokens              log1p(x) / log1p(262144)
    7     prefill[prfaas].wait_s                 s                   log1p(x) / log1p(600)
    8     prefill[prfaas].busy_fraction          fraction            none
    9     prefill[pd].cached_tokens              tokens              log1p(x) / log1p(262144)
    10    prefill[pd].uncached_tokens            tokens              log1p(x) / log1p(262144)
    11    prefill[pd].prefill_s                  s                   log1p(x) / log1p(600)
    12    prefill[pd].queued_requests            requests            log1p(x) / log1p(1024)
    13    prefill[pd].queued_tokens              tokens              log1p(x) / log1p(262144)
    14    prefill[pd].wait_s                     s                   log1p(x) / log1p(600)
    15    prefill[pd].busy_fraction              fraction            none
    16    channel[remote->local].bandwidth       fraction of nominal none
    17    channel[remote->local].bytes_in_flight bytes               log1p(x / 1e9) / log1p(100)
    18    channel[remote->local].flows           transfers           log1p(x) / log1p(1024)
    19    channel[remote->local].transfer_s      s                   log1p(x) / log1p(600)
    20    decode[pd].free_slots                  fraction            none
    21    decode[pd].kv_used                     fraction            none
    22    decode[pd].admission_queue             requests            log1p(x) / log1p(1024)
    23    decode[pd].admission_wait_s            s                   log1p(x) / log1p(600)
    24    route[prfaas->pd].estimated_ttft_s     s                   log1p(x) / log1p(600)
    25    route[pd->pd].estimated_ttft_s         s                   log1p(x) / log1p(600)
    26    recent.ttft_ewma_s                     s                   log1p(x) / log1p(600)
    ===== ====================================== =================== ===========================

    **Reward** (:mod:`prfaas_env.env.reward`): a weighted sum of per-step terms, each the
    change of a counter between two decisions: ``slo`` requests completed within both SLOs
    (requests), ``ttft`` minus their summed TTFT over the TTFT SLO, ``waiting`` minus the
    request-seconds spent waiting for a first token over the TTFT SLO, ``throughput`` output
    tokens / 1000, ``reject`` minus the requests turned away. Weights from ``env.reward``
    (defaults ``slo`` 1, ``reject`` 1, others 0: goodput). ``info["reward_terms"]`` holds
    each unweighted term.

    **Starting state.** Empty clusters and caches; each env draws its requests and link
    bandwidth from its own generator: ``reset(seed=s)`` seeds env ``i`` with ``s + i``, so
    env ``i`` equals a single ``PrfaaSEnv`` reset with ``seed=s + i`` (tested).

    **Episode end.** Truncation only (``terminated`` is always False): after
    ``env.max_decisions`` decisions or ``env.max_seconds`` simulated seconds, whichever
    comes first. Requests in flight at truncation do not count. The finishing step's
    ``info["episode_summary"]`` has the episode's metrics (throughput, TTFT mean and
    percentiles, TPOT, SLO attainment, offload fraction, link utilisation, cache-hit
    fraction, rejected and completed), NaN for envs that did not finish.

    **Autoreset** (``metadata["autoreset_mode"]``): ``NEXT_STEP`` (default: the step after an
    env's episode ends resets it, ignoring its action, with reward 0), ``SAME_STEP`` (reset
    at once; ``info["final_obs"]`` and ``info["final_info"]`` hold the last observation and
    info), ``DISABLED`` (reset with ``reset(options={"reset_mask": mask})``).

    **Info**: ``action_mask``, ``sim_time_s`` (simulated time of each env's pending
    arrival, s), ``reward_terms``, ``episode_summary`` when an episode ends.

    Args:
        num_envs: copies.
        config: a scenario file path, the name of a shipped config (``configs/NAME.yaml``) or a
            mapping; default the paper's case study.
        autoreset_mode: see above (an ``AutoresetMode`` or its name).
        render_mode: ``"ansi"`` or None.
        max_episode_steps: overrides ``env.max_decisions`` of the config.
        parallel: split envs over numba's threads (default: from 256 envs up).
        rate_multiplier: scales the scenario's arrival rate (e.g. to train under heavy load).
        dict_observation: overrides ``env.observation.dict`` of the config (the
            ``{"observation", "action_mask"}`` form, for libraries that mask actions).
        observation_form: overrides ``env.observation.form`` of the config (``flat`` or
            ``routes``).
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["ansi"],
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        config: str | Path | dict[str, Any] | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        parallel: bool | None = None,
        rate_multiplier: float | None = None,
        dict_observation: bool | None = None,
        observation_form: str | None = None,
    ) -> None:
        self.scenario, cfg = resolve_config(config)
        if observation_form is not None:
            cfg = with_observation_form(cfg, observation_form)
        if rate_multiplier is not None:
            self.scenario = self.scenario.with_rate(float(rate_multiplier))
        if max_episode_steps is not None:
            cfg = replace(cfg, max_decisions=int(max_episode_steps))
        if dict_observation is not None:
            cfg = replace(cfg, dict_observation=bool(dict_observation))
        self.config: EnvConfig = cfg
        self.autoreset_mode = parse_autoreset(autoreset_mode)
        self.metadata = {**type(self).metadata, "autoreset_mode": self.autoreset_mode}
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode: {render_mode!r} is not allowed; allowed: ansi, None")
        self.render_mode = render_mode
        self.num_envs = int(num_envs)
        topo = self.scenario.topology
        self.route_labels = topo.route_labels()
        self.action_meanings = topo.action_labels(cfg.admission_control)
        self.num_actions = len(self.action_meanings)
        self.sim = VecSimulator(self.scenario, self.num_envs, parallel=parallel)
        self.observer = SimObserver(self.sim, self.num_actions, cfg.bandwidth_staleness_s)
        self.encoder = self.observer.encoder
        self.reward = Reward(self.scenario.ttft_slo_s, cfg.reward)
        box = gym.spaces.Box(0.0, OBS_HIGH, (self.encoder.size,), np.float32)
        self.route_form: RouteForm | None = None
        if cfg.observation_form == "routes":
            self.route_form = RouteForm.of(topo, self.scenario.ttft_slo_s)
            r = self.route_form.num_routes
            self.single_observation_space = gym.spaces.Dict(
                {
                    "routes": gym.spaces.Box(-1.0, HIGH, (r, len(ROUTE_FEATURES)), np.float32),
                    "global": gym.spaces.Box(-1.0, HIGH, (len(GLOBAL_FEATURES),), np.float32),
                    "action_mask": gym.spaces.Box(0.0, 1.0, (self.num_actions,), np.float32),
                }
            )
        elif cfg.dict_observation:
            self.single_observation_space: gym.Space = gym.spaces.Dict(
                {
                    "observation": box,
                    "action_mask": gym.spaces.Box(0.0, 1.0, (self.num_actions,), np.float32),
                }
            )
        else:
            self.single_observation_space = box
        self.single_action_space = gym.spaces.Discrete(self.num_actions)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.spaces.MultiDiscrete(np.full(self.num_envs, self.num_actions))
        self._rngs: list[np.random.Generator] = [
            seeding.np_random(None)[0] for _ in range(self.num_envs)
        ]
        self._steps = np.zeros(self.num_envs, np.int64)
        self._autoreset = np.zeros(self.num_envs, np.bool_)
        self._last = np.zeros_like(self.observer.counters)
        self._no_envs = np.zeros(self.num_envs, np.bool_)
        self._num_routes = len(self.route_labels)
        self._max_decisions = -1 if cfg.max_decisions is None else int(cfg.max_decisions)
        self._max_seconds = np.inf if cfg.max_seconds is None else float(cfg.max_seconds)

    # ---- spaces and masks -------------------------------------------------------------------
    def action_masks(self) -> NDArray[np.bool_]:
        """``[env, action]`` True where the action is allowed now (see the class docstring)."""
        return self.observer.mask.copy()

    def view(self) -> dict[str, NDArray[np.float64]]:
        """The view of every env's pending decision in physical units (arrays keyed by view
        entry, as heuristics read it; valid until the next step or reset)."""
        return self.observer.view()

    def _obs(self) -> Any:
        """Observations of the pending decisions."""
        obs = self.observer.observe()
        if self.route_form is not None:
            mask = self.observer.mask
            routes, glob = route_features(self.route_form, self.observer.view(), mask)
            return {"routes": routes, "global": glob, "action_mask": mask.astype(np.float32)}
        if self.config.dict_observation:
            return {"observation": obs, "action_mask": self.observer.mask.astype(np.float32)}
        return obs

    # ---- reset and step --------------------------------------------------------------------
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset all envs, or those in ``options["reset_mask"]``; env ``i`` of ``seed=s`` is
        seeded ``s + i`` (so it equals a single ``PrfaaSEnv`` reset with ``seed=s + i``)."""
        mask = np.ones(self.num_envs, np.bool_)
        if options and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], np.bool_)
            if mask.shape != (self.num_envs,):
                raise ValueError(
                    f"options['reset_mask']: expected shape ({self.num_envs},), got {mask.shape}"
                )
        generators: list[np.random.Generator | None] | None = None
        if seed is not None:
            seeds = (
                [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
            )
            if len(seeds) != self.num_envs:
                raise ValueError(f"seed: expected {self.num_envs} seeds, got {len(seeds)}")
            generators = [seeding.np_random(s)[0] for s in seeds]
        return self.reset_envs(mask, generators)

    def reset_envs(
        self,
        mask: NDArray[np.bool_],
        generators: list[np.random.Generator | None] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the envs in ``mask`` now and return every env's observation and info.

        A reset env draws its simulator seed from its own generator; ``generators[i]`` (when
        given and not None) replaces env ``i``'s generator first. This is how a single
        ``PrfaaSEnv`` makes its ``np_random`` the generator of its one env.
        """
        if generators is not None:
            for i in np.flatnonzero(mask):
                if generators[i] is not None:
                    self._rngs[i] = generators[i]  # type: ignore[assignment]
        self._reset_sim(mask)
        self._autoreset[mask] = False
        return self._obs(), self._info(None, None, None)

    def _reset_sim(self, mask: NDArray[np.bool_]) -> None:
        if not mask.any():
            return
        sim_seeds = [
            int(self._rngs[i].integers(0, 2**63 - 1)) if mask[i] else 0
            for i in range(self.num_envs)
        ]
        self.sim.reset(seed=sim_seeds, mask=mask)
        self._steps[mask] = 0
        self._last[mask] = self.observer.counters[mask]

    def step(self, actions: Any) -> tuple[Any, NDArray, NDArray, NDArray, dict[str, Any]]:
        """Route every env's pending request (see the class docstring for autoreset)."""
        a = check_actions(actions, self.num_envs, self.action_meanings)
        routes = (
            a if self._num_routes == self.num_actions else routes_from_actions(a, self._num_routes)
        )
        resetting = self._no_envs
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and self._autoreset.any():
            resetting = self._autoreset  # these envs reset instead of stepping
        stepping = resetting is self._no_envs
        self.sim.step(routes, None if stepping else ~resetting, checked=True)
        terms = np.empty((self.num_envs, len(REWARD_TERMS)))
        reward = np.empty(self.num_envs)
        truncated = np.empty(self.num_envs, np.bool_)
        rw = self.reward
        ended = account(
            self.observer.counters,
            self._last,
            self._steps,
            resetting,
            self.sim.now,
            rw.cols,
            rw.sign,
            rw.div,
            rw.w,
            self._max_decisions,
            self._max_seconds,
            terms,
            reward,
            truncated,
        )
        summary = self._summary(truncated) if ended else None
        if not stepping:
            self._reset_sim(resetting.copy())
        if self.autoreset_mode == AutoresetMode.SAME_STEP and summary is not None:
            final_obs = self._obs()
            final_info = self._info(terms, summary, truncated)
            self._reset_sim(truncated)
            obs = self._obs()
            info = self._info(terms, None, None)
            info["final_obs"] = _masked(final_obs, truncated)
            info["_final_obs"] = truncated.copy()
            info["final_info"] = final_info
            info["_final_info"] = truncated.copy()
        else:
            obs = self._obs()
            info = self._info(terms, summary, truncated)
        self._autoreset = truncated.copy()
        return obs, reward, np.zeros(self.num_envs, np.bool_), truncated, info

    def _summary(self, done: NDArray[np.bool_]) -> dict[str, NDArray]:
        m = self.sim.metrics()
        return {k: np.where(done, m[k], np.nan) for k in SUMMARY_KEYS}

    def _info(
        self,
        terms: NDArray[np.float64] | None,
        summary: dict[str, NDArray] | None,
        done: NDArray[np.bool_] | None,
    ) -> dict[str, Any]:
        every = np.ones(self.num_envs, np.bool_)
        info: dict[str, Any] = {
            "action_mask": self.observer.mask.copy(),
            "_action_mask": every,
            "sim_time_s": self.sim.now.copy(),
            "_sim_time_s": every,
        }
        if terms is not None:
            info["reward_terms"] = {k: terms[:, j] for j, k in enumerate(REWARD_TERMS)}
            info["_reward_terms"] = every
        if summary is not None and done is not None:
            info["episode_summary"] = summary
            info["_episode_summary"] = done.copy()
        return info

    def render(self) -> str | None:
        """A text summary of every env (``render_mode="ansi"``)."""
        if self.render_mode != "ansi":
            return None
        m = self.sim.metrics()
        lines = []
        for e in range(self.num_envs):
            lines.append(
                f"env {e}: t={self.sim.now[e]:.1f}s decisions={int(m['decisions'][e])} "
                f"done={int(m['completed'][e])} TTFT p90={m['ttft_p90_s'][e]:.2f}s "
                f"SLO={m['slo_attainment'][e]:.2f} offload={m['offload_fraction'][e]:.2f} "
                f"link={m['link_utilisation'][e]:.2f}"
            )
        return "\n".join(lines)


def _masked(obs: Any, mask: NDArray[np.bool_]) -> Any:
    """Per-env final observations as an object array (None where the env did not finish)."""
    out = np.empty(len(mask), dtype=object)
    for i in range(len(mask)):
        if mask[i]:
            out[i] = {k: v[i] for k, v in obs.items()} if isinstance(obs, dict) else obs[i]
    return out
