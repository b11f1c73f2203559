"""What a trained policy depends on: the observation features in order and the action
meanings. Runs and bundles store this signature; :func:`check_spaces` compares it with a
config and names the first difference."""

from __future__ import annotations

from typing import Any

from prfaas_env.env.config import EnvConfig
from prfaas_env.errors import ConfigError, first_difference
from prfaas_env.observation.encoder import ObservationEncoder
from prfaas_env.observation.routes import RouteTable
from prfaas_env.sim.scenario import Scenario


def spaces_signature(scenario: Scenario, env_cfg: EnvConfig) -> dict[str, Any]:
    """What a trained policy depends on: observation features in order, action meanings."""
    enc = ObservationEncoder(scenario.topology)
    routes = RouteTable.from_topology(scenario.topology, env_cfg.admission_control)
    return {
        "features": [f.name for f in enc.features()],
        "actions": list(routes.labels),
        "dict_observation": env_cfg.dict_observation,
    }


def check_spaces(
    run_sig: dict[str, Any], scenario: Scenario, env_cfg: EnvConfig, run: str, form: bool = True
) -> None:
    """ConfigError saying which dimension differs when a run was trained on other spaces
    (``form``: also compare the Box/Dict observation form, which an exported bundle does not
    depend on)."""
    here = spaces_signature(scenario, env_cfg)
    src = scenario.source
    a, b = run_sig["features"], here["features"]
    if a != b:
        first = first_difference(a, b)
        got_a = a[first] if first < len(a) else "(none)"
        got_b = b[first] if first < len(b) else "(none)"
        raise ConfigError(
            f"{run} does not match {src}: observation has {len(a)} features in the run and "
            f"{len(b)} in the config; first difference at index {first}: {got_a!r} (run) vs "
            f"{got_b!r} (config)"
        )
    if run_sig["actions"] != here["actions"]:
        raise ConfigError(
            f"{run} does not match {src}: the run has {len(run_sig['actions'])} actions "
            f"({', '.join(run_sig['actions'])}), the config {len(here['actions'])} "
            f"({', '.join(here['actions'])})"
        )
    if form and bool(run_sig.get("dict_observation")) != here["dict_observation"]:
        raise ConfigError(
            f"{run} does not match {src}: env.observation.dict is "
            f"{run_sig.get('dict_observation')} in the run, {here['dict_observation']} in the "
            f"config"
        )
