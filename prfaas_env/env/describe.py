"""Print the observation table and action meanings of a config as Markdown.

Run: ``python -m prfaas_env.env.describe [--config NAME_OR_PATH]``; docs/environment.md holds
its output for the default scenario (a test keeps the two equal).
"""

from __future__ import annotations

import argparse

from prfaas_env.env.config import resolve_config
from prfaas_env.env.features import OBS_HIGH, ObservationEncoder
from prfaas_env.sim.topology import REJECT_LABEL


def describe(config: str | None = None) -> str:
    """The Markdown tables for ``config`` (default scenario when None)."""
    sc, cfg = resolve_config(config)
    enc = ObservationEncoder(sc.topology)
    labels = sc.topology.action_labels(cfg.admission_control)
    lines = ["| action | meaning |", "|---|---|"]
    for i, label in enumerate(labels):
        meaning = (
            "turn the request away"
            if label == REJECT_LABEL
            else (f"prefill on {label.split('->')[0]}, decode on {label.split('->')[1]}")
        )
        lines.append(f"| {i} | `{label}`: {meaning} |")
    lines += [
        "",
        f"Observation: Box(0, {OBS_HIGH:g}, ({enc.size},), float32)",
        "",
        "| index | feature | meaning | unit | normalisation |",
        "|---|---|---|---|---|",
    ]
    for i, f in enumerate(enc.features()):
        lines.append(f"| {i} | `{f.name}` | {f.meaning} | {f.unit} | {f.normalisation} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="config name or path (default: paper_prfaas)")
    print(describe(ap.parse_args().config), end="")


if __name__ == "__main__":
    main()
