"""Print the observation table and action meanings of a config as Markdown.

Run: ``python -m prfaas_env.env.describe [--config NAME_OR_PATH]``; docs/environment.md holds
its output for the default scenario (a test keeps the two equal).
"""

from __future__ import annotations

import argparse
import re

from prfaas_env.env.config import resolve_config
from prfaas_env.observation.encoder import OBS_HIGH, ObservationEncoder
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


def feature_table(config: str | None = None) -> str:
    """The compact feature table (index, feature, unit, normalisation) the vector env's
    docstring holds for the default scenario, as reStructuredText."""
    sc, _ = resolve_config(config)
    rows = [
        (str(i), f.name, f.unit, f.normalisation)
        for i, f in enumerate(ObservationEncoder(sc.topology).features())
    ]
    head = ("index", "feature", "unit", "normalisation")
    widths = [max(len(r[j]) for r in [head, *rows]) for j in range(4)]
    rule = " ".join("=" * w for w in widths)

    def line(r: tuple[str, ...]) -> str:
        return " ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()

    return "\n".join([rule, line(head), rule, *(line(r) for r in rows), rule]) + "\n"


def mdp_markdown() -> str:
    """The MDP as :class:`~prfaas_env.env.vector.PrfaaSVectorEnv`'s docstring states it (up
    to its arguments, without the compact feature table), for docs/environment.md."""
    import inspect

    from prfaas_env.env.vector import PrfaaSVectorEnv

    doc = inspect.cleandoc(PrfaaSVectorEnv.__doc__ or "")
    doc = doc.split("\nArgs:\n")[0]
    lines = doc.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("=====")]
    if rules:  # the compact table: docs/environment.md prints the full one
        lines = lines[: rules[0]] + lines[rules[-1] + 1 :]
    text = "\n".join(lines).replace("\n\n\n", "\n\n").strip()
    # the compact table was cut: the page tables the features at its end
    text = re.sub(
        r"features \(``python -m .*?current\):",
        "features are tabled at the end of this page.",
        text,
    )
    return text + "\n"


def environment_doc() -> str:
    """The generated part of docs/environment.md: the MDP, the reward terms, and the default
    scenario's actions and features (``python -m prfaas_env.env.describe --doc``)."""
    import inspect

    from prfaas_env.env import reward

    terms = inspect.cleandoc(reward.__doc__ or "").split("\n\n", 1)[1]
    return (
        "## The MDP\n\n"
        + mdp_markdown()
        + "\n## Reward terms\n\n"
        + terms.strip()
        + "\n\n## The per-route observation form\n\n"
        + route_form_table()
        + "\n## Actions and observation of the default scenario\n\n"
        + describe()
    )


def route_form_table() -> str:
    """The features of the per-route form (``env.observation.form: routes``) as Markdown."""
    from prfaas_env.observation.per_route import GLOBAL_FEATURES, ROUTE_FEATURES

    lines = [
        "Per route (`routes`, one row per route; `slo` is the scenario's TTFT SLO):",
        "",
        "| index | feature | value |",
        "|---|---|---|",
    ]
    lines += [f"| {i} | `{n}` | {m} |" for i, (n, m) in enumerate(ROUTE_FEATURES)]
    lines += ["", "Per decision (`global`):", "", "| index | feature | value |", "|---|---|---|"]
    lines += [f"| {i} | `{n}` | {m} |" for i, (n, m) in enumerate(GLOBAL_FEATURES)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="config name or path (default: paper_prfaas)")
    ap.add_argument(
        "--compact", action="store_true", help="the compact table of the env's docstring"
    )
    ap.add_argument("--doc", action="store_true", help="the generated part of the docs page")
    args = ap.parse_args()
    if args.doc:
        print(environment_doc(), end="")
    else:
        print((feature_table if args.compact else describe)(args.config), end="")


if __name__ == "__main__":
    main()
