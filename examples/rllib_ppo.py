"""PPO with Ray RLlib (new API stack) on the native vector env, on one machine or a cluster.

    python examples/rllib_ppo.py --iterations 20                       # this machine
    python examples/rllib_ppo.py --address auto --iterations 200 \\
        --set env_runners.num_env_runners=16 --set learners.num_learners=2   # a Ray cluster

Settings come from ``configs/rllib/ppo.yaml`` (``--file`` for another), overridden with
``--set section.key=value``. Each env runner steps one PrfaaSVectorEnv of
``num_envs_per_env_runner`` envs (Gymnasium's ``vector_entry_point``, NEXT_STEP autoreset);
actions are masked through the Dict observation. Prints the mean episode return per
iteration and saves a checkpoint with ``--checkpoint DIR``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILE = ROOT / "configs" / "rllib" / "ppo.yaml"
SECTIONS = {"env", "env_runners", "learners", "network", "training"}


def load_settings(
    path: Path, overrides: list[str], sections: set[str] = SECTIONS
) -> dict[str, Any]:
    """The YAML settings with ``section.key=value`` overrides (values parsed as YAML)."""
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - sections
    if unknown:
        raise SystemExit(
            f"{path}: unknown section(s) {sorted(unknown)}; allowed: {sorted(sections)}"
        )
    for item in overrides:
        key, sep, value = item.partition("=")
        section, _, name = key.partition(".")
        if not sep or not name or section not in sections:
            raise SystemExit(
                f"--set {item!r}: expected SECTION.KEY=VALUE, SECTION one of {sorted(sections)}"
            )
        raw.setdefault(section, {})[name] = scalar(value)
    return raw


def scalar(text: str) -> Any:
    """A ``--set`` value parsed as YAML, with numbers YAML 1.1 leaves as text (``3e-5``, no
    decimal point) read as numbers."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def start_ray(address: str | None) -> Any:
    """Join the Ray cluster at ``address``, or start a local instance with every process on
    loopback (the variable is read when Ray is imported); the ``ray`` module."""
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    return ray


ENV_KEYS = {"config", "rate_multiplier", "max_episode_steps", "autoreset_mode", "masked"}


def build(settings: dict[str, Any]) -> Any:
    """The RLlib algorithm for ``settings`` (Ray must be initialised): ``env`` goes to
    ``env_config``, ``env_runners``, ``learners`` and ``training`` to the PPOConfig methods of
    those names (so any of their arguments can be set), ``network.hidden`` to the module."""
    from prfaas_env.integrations.rllib import env_config, ppo_config

    env = settings.get("env", {})
    unknown = set(env) - ENV_KEYS
    if unknown:
        raise SystemExit(f"env: unknown key(s) {sorted(unknown)}; allowed: {sorted(ENV_KEYS)}")
    runners = dict(settings.get("env_runners", {}))
    learners = dict(settings.get("learners", {}))
    cfg = ppo_config(
        env_config(**env),
        num_env_runners=int(runners.pop("num_env_runners", 0)),
        num_envs_per_env_runner=int(runners.pop("num_envs_per_env_runner", 64)),
        num_learners=int(learners.pop("num_learners", 0)),
        hidden=tuple(settings.get("network", {}).get("hidden", (64, 64))),
        training=settings.get("training", {}),
    )
    try:  # the remaining keys are PPOConfig arguments (RLlib names any it does not know)
        cfg = cfg.env_runners(**runners).learners(**learners)
    except TypeError as exc:
        raise SystemExit(f"env_runners/learners: {exc}") from exc
    return cfg.build_algo()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", type=Path, default=DEFAULT_FILE, help="settings YAML")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--address", default=None, help="Ray cluster address ('auto' to join)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="save the algorithm here")
    args = ap.parse_args(argv)
    settings = load_settings(args.file, args.set)
    ray = start_ray(args.address)
    algo = build(settings)
    try:
        start = time.perf_counter()
        for i in range(args.iterations):
            result = algo.train()
            runners = result.get("env_runners", {})
            print(
                f"iteration {i + 1}: {runners.get('num_env_steps_sampled_lifetime', 0):,.0f} "
                f"steps, episode return {runners.get('episode_return_mean', float('nan')):.2f}, "
                f"{time.perf_counter() - start:.0f} s"
            )
        if args.checkpoint is not None:
            algo.save_to_path(str(args.checkpoint.resolve()))
            print(f"saved {args.checkpoint}")
    finally:
        algo.stop()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
