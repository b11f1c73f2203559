"""The ``env:`` section of a scenario file: episodes, rewards, observation options.

Keys (defaults are :class:`EnvConfig`'s; the MDP is specified in
:class:`prfaas_env.env.vector.PrfaaSVectorEnv`'s docstring)::

    env:
      max_decisions:            # episode length in routing decisions (truncation)
      max_seconds:              # or a limit in simulated seconds (whichever comes first)
      admission_control:        # add a "reject" action
      observation:
        bandwidth_staleness_s:  # link bandwidth as measured at the last multiple of this (s)
        dict:                   # Dict observation {"observation", "action_mask"}, not a Box
        form:                   # flat (per cluster, channel and route) or routes (per route)
      reward: {TERM: WEIGHT}    # weights of the terms of prfaas_env.env.reward
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prfaas_env.env.reward import DEFAULT_WEIGHTS, REWARD_TERMS
from prfaas_env.errors import ConfigError, check_keys, number
from prfaas_env.sim.scenario import Scenario, load_scenario, parse_scenario

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_CONFIG = "paper_prfaas"
# the observation's forms: one entry per cluster, channel and route of the topology (flat), or
# one row of scale-free features per candidate route (routes: any topology, one network)
OBSERVATION_FORMS = ("flat", "routes")


@dataclass(frozen=True)
class EnvConfig:
    """Episode, reward and observation settings (see the module docstring): the one place
    their defaults are written."""

    max_decisions: int | None = 1024
    max_seconds: float | None = None
    admission_control: bool = False
    bandwidth_staleness_s: float = 0.0
    dict_observation: bool = False
    observation_form: str = "flat"
    reward: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))


def _flag(raw: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def parse_env_config(raw: Any, where: str) -> EnvConfig:
    """Build an EnvConfig from the ``env:`` mapping (``None``: defaults)."""
    if raw is None:
        return EnvConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    check_keys(
        raw,
        where,
        [],
        ["max_decisions", "max_seconds", "admission_control", "observation", "reward"],
    )
    obs = raw.get("observation") or {}
    if not isinstance(obs, dict):
        raise ConfigError(f"{where}.observation: expected a mapping")
    check_keys(obs, f"{where}.observation", [], ["bandwidth_staleness_s", "dict", "form"])
    form = obs.get("form", EnvConfig.observation_form)
    if form not in OBSERVATION_FORMS:
        raise ConfigError(
            f"{where}.observation.form: {form!r} is not allowed; allowed: "
            f"{', '.join(OBSERVATION_FORMS)}"
        )
    rew = raw.get("reward") or {}
    if not isinstance(rew, dict):
        raise ConfigError(f"{where}.reward: expected a mapping of {', '.join(REWARD_TERMS)}")
    check_keys(rew, f"{where}.reward", [], REWARD_TERMS)
    weights = dict(EnvConfig().reward)
    for k in rew:
        weights[k] = number(rew, k, f"{where}.reward", minimum=-1e6, maximum=1e6)
    cfg = EnvConfig(
        max_decisions=number(raw, "max_decisions", where, minimum=1, integer=True, default=None),
        max_seconds=number(
            raw, "max_seconds", where, minimum=0, exclusive_minimum=True, default=None
        ),
        admission_control=_flag(raw, "admission_control", where, False),
        bandwidth_staleness_s=number(
            obs, "bandwidth_staleness_s", f"{where}.observation", minimum=0, default=0.0
        ),
        dict_observation=_flag(obs, "dict", f"{where}.observation", False),
        observation_form=form,
        reward=weights,
    )
    if "max_decisions" not in raw and cfg.max_seconds is None:
        cfg = replace(cfg, max_decisions=EnvConfig.max_decisions)
    if cfg.max_decisions is None and cfg.max_seconds is None:
        raise ConfigError(f"{where}: set max_decisions or max_seconds (episodes must end)")
    if cfg.observation_form == "routes" and cfg.admission_control:
        raise ConfigError(
            f"{where}: observation.form routes describes routes only; it does not combine "
            "with admission_control (a reject action)"
        )
    return cfg


def with_observation_form(cfg: EnvConfig, form: str) -> EnvConfig:
    """``cfg`` with observation form ``form`` (ValueError naming the allowed forms, or why
    ``routes`` does not apply)."""
    if form not in OBSERVATION_FORMS:
        raise ValueError(
            f"observation_form: {form!r} is not allowed; allowed: {', '.join(OBSERVATION_FORMS)}"
        )
    if form == "routes" and cfg.admission_control:
        raise ValueError(
            "observation_form: routes describes routes only; it does not combine with "
            "env.admission_control (a reject action)"
        )
    return replace(cfg, observation_form=form)


def shipped_configs() -> list[str]:
    """Names of the scenario files shipped in ``configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config(config: str | Path | dict[str, Any] | None) -> tuple[Scenario, EnvConfig]:
    """A scenario and its env settings from a path, a shipped name or a mapping.

    ``None`` is the default scenario (``paper_prfaas``).
    """
    if isinstance(config, dict):
        sc = parse_scenario(config, "config")
    else:
        name = DEFAULT_CONFIG if config is None else str(config)
        path = Path(name)
        if not path.is_file():
            shipped = CONFIG_DIR / f"{name}.yaml"
            if not shipped.is_file():
                raise ConfigError(
                    f"config {name!r}: no such file and not a shipped config; shipped configs: "
                    f"{', '.join(shipped_configs())}"
                )
            path = shipped
        sc = load_scenario(path)
    raw = sc.raw or {}
    return sc, parse_env_config(raw.get("env"), f"{sc.source}: env")


def held_out_config(scenario: Scenario) -> tuple[Scenario, EnvConfig] | None:
    """The scenario (and its env settings) named by the file's ``held_out:`` key (data kept
    out of training, e.g. a later trace window): a shipped config name or a path relative to
    the file; None if unset."""
    raw = scenario.raw or {}
    name = raw.get("held_out")
    if name is None:
        return None
    if not isinstance(name, str):
        raise ConfigError(f"{scenario.source}: held_out: expected a config name or path")
    here = Path(scenario.source).parent
    candidate = here / name
    try:
        return resolve_config(candidate if candidate.is_file() else name)
    except ConfigError as exc:
        raise ConfigError(f"{scenario.source}: held_out: {exc}") from exc
