"""Export a per-route policy (one network for any topology) to a router bundle.

A per-route bundle is topology-free: the router is given the deployment's topology, TTFT SLO
and expected output length when it loads the bundle (``prfaas_env.router.open_router``).
Files::

    manifest.json   form "routes"; the route and global features in order with their
                    meanings; the guard (per feature, the range the training data covered);
                    the fallback heuristic; provenance; parity figures; SHA-256 per file
    policy.onnx     inputs routes float32 [batch, routes, F], global float32 [batch, G],
                    action_mask bool [batch, routes]; outputs action int64 [batch], scores
                    float32 [batch, routes] (higher is better, before masking); both batch
                    and routes are dynamic
    golden.jsonl    live states of several topologies with the expected action and scores
    topologies.json the topologies (and TTFT SLOs, expected outputs) the golden lines use
    run.json        what trained it (copied from the training run)

:func:`export_route_bundle` takes any torch module with ``forward(routes, global, mask) ->
(action, scores)``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from prfaas_env import package_versions
from prfaas_env.errors import ConfigError, replaceable_out
from prfaas_env.evaluation import VALIDATION_SEED, run_policy, seed_range
from prfaas_env.export.graph import ONNX_OPSET, export_onnx
from prfaas_env.export.record import (
    Recording,
    folder_in_place,
    portable_topology,
    score_margin,
)
from prfaas_env.observation.live import STATE_FORMAT, LiveState
from prfaas_env.observation.per_route import GLOBAL_FEATURES, ROUTE_FEATURES
from prfaas_env.policies import Policy, RouteTable, View
from prfaas_env.policies.learned import RoutePolicy
from prfaas_env.router.bundle import STATELESS_FALLBACKS, content_hash, sha256
from prfaas_env.router.routes import ROUTE_BUNDLE_FORMAT
from prfaas_env.sim.scenario import Scenario

ROUTE_INPUTS = ("routes", "global", "action_mask")
OUTPUTS = ("action", "scores")
TIE = 1e-4


def write_route_onnx(module: torch.nn.Module, path: Path) -> None:
    """``module`` (routes, global, mask) -> (action, scores) as ONNX with dynamic batch and
    route dimensions."""
    batch = torch.export.Dim("batch", min=1)
    routes = torch.export.Dim("routes", min=1, max=4096)
    example = (
        torch.zeros(2, 3, len(ROUTE_FEATURES)),
        torch.zeros(2, len(GLOBAL_FEATURES)),
        torch.ones(2, 3, dtype=torch.bool),
    )
    export_onnx(
        module,
        example,
        path,
        list(ROUTE_INPUTS),
        list(OUTPUTS),
        ({0: batch, 1: routes}, {0: batch}, {0: batch, 1: routes}),
    )


class _Recorder(Policy):
    """Runs a route policy and keeps every view, mask and action it saw."""

    def __init__(self, inner: RoutePolicy) -> None:
        super().__init__(inner.routes, inner.topology)
        self.inner = inner
        self.name = inner.name
        self.views: list[View] = []
        self.masks: list[NDArray[np.bool_]] = []
        self.actions: list[NDArray[np.int64]] = []

    def act(self, view: View, mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        a = self.inner.act(view, mask)
        self.views.append({k: np.array(v, dtype=np.float64) for k, v in view.items()})
        self.masks.append(mask.copy())
        self.actions.append(a)
        return a


def _record(scenario: Scenario, policy: RoutePolicy, seeds: list[int], decisions: int) -> Recording:
    rec = _Recorder(policy)
    run = run_policy(scenario, lambda _sc: rec, policy.name, seeds, decisions)
    view = {k: np.concatenate([v[k] for v in rec.views]) for k in rec.views[0]}
    return Recording(view, np.concatenate(rec.masks), np.concatenate(rec.actions), run)


def export_route_bundle(
    module: torch.nn.Module,
    scores: Callable[
        [NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]], NDArray[np.float64]
    ],
    scenarios: Sequence[tuple[str, Scenario]],
    out: str | Path,
    ranges: dict[str, list[list[float]]],
    provenance: dict[str, Any],
    fallback: str = "mooncake",
    seeds: int = 2,
    decisions: int = 500,
    golden: int = 48,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the per-route bundle of ``module`` (its NumPy twin ``scores``) into ``out``.

    Records ``seeds x decisions`` decisions of each of ``scenarios`` (validation seeds),
    checks that ONNX Runtime picks the module's action on every one whose two best scores
    are more than 1e-4 apart (RuntimeError otherwise), writes ``golden`` lines per scenario,
    the guard ``ranges`` (``{"routes": [[lo, hi] per feature], "global": [...]}``) and the
    manifest. Returns the manifest.
    """
    import onnxruntime as ort

    out = Path(out)
    replaceable_out(out, force, "manifest.json", "bundle")
    if fallback not in STATELESS_FALLBACKS:
        raise ConfigError(f"fallback {fallback!r}: allowed: {', '.join(STATELESS_FALLBACKS)}")
    for key, names in (("routes", ROUTE_FEATURES), ("global", GLOBAL_FEATURES)):
        if len(ranges.get(key, [])) != len(names):
            raise ConfigError(f"ranges[{key!r}]: expected {len(names)} [low, high] pairs")
    with folder_in_place(out) as work:  # replaces `out` only when complete
        write_route_onnx(module, work / "policy.onnx")
        sess = ort.InferenceSession(str(work / "policy.onnx"), providers=["CPUExecutionProvider"])
        golden_lines, topologies, agree, total, real, max_diff = [], {}, 0, 0, 0, 0.0
        for name, sc in scenarios:
            topo = sc.topology
            routes = RouteTable.from_topology(topo)
            pol = RoutePolicy(routes, topo, scores, sc.ttft_slo_s, "generalist")
            echo(f"recording {seeds} x {decisions} decisions of {name} ...")
            rec = _record(sc, pol, seed_range(VALIDATION_SEED, seeds), decisions)
            feats, glob, allowed = pol.features(rec.view, rec.mask)
            ref = scores(feats, glob, allowed)
            a_onnx, s_onnx = sess.run(
                list(OUTPUTS), {"routes": feats, "global": glob, "action_mask": allowed}
            )
            margin = score_margin(ref, allowed)
            agree += int((a_onnx == rec.actions).sum())
            real += int(((a_onnx != rec.actions) & (margin > TIE)).sum())
            total += len(rec.actions)
            max_diff = max(max_diff, float(np.abs(s_onnx - ref).max()))
            live = LiveState(topo, sc.workload.mean_output_tokens())
            topologies[name] = {
                "topology": portable_topology(sc.raw["topology"]),
                "ttft_slo_s": sc.ttft_slo_s,
                "expected_output_tokens": sc.workload.mean_output_tokens(),
            }
            ok = np.flatnonzero(margin > 1e-3)
            for i in (
                ok[np.linspace(0, len(ok) - 1, min(golden, len(ok))).astype(int)] if len(ok) else []
            ):
                golden_lines.append(
                    {
                        "topology": name,
                        "state": live.state(rec.view, int(i)),
                        "action": int(rec.actions[i]),
                        "label": routes.labels[int(rec.actions[i])],
                        "scores": [float(x) for x in ref[i]],
                    }
                )
        if real:
            raise RuntimeError(
                f"the exported graph disagrees with the module on {real} of {total} recorded "
                f"decisions whose two best scores are more than {TIE} apart"
            )
        echo(f"parity on {total} recorded decisions: ONNX agrees on {agree}")
        with (work / "golden.jsonl").open("w") as f:
            for line in golden_lines:
                f.write(json.dumps(line) + "\n")
        (work / "topologies.json").write_text(json.dumps(topologies, indent=1) + "\n")
        (work / "run.json").write_text(json.dumps(provenance, indent=1, default=float) + "\n")
        manifest = {
            "format": ROUTE_BUNDLE_FORMAT,
            "form": "routes",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {
                "onnx": "policy.onnx",
                "opset": ONNX_OPSET,
                "inputs": [
                    {
                        "name": "routes",
                        "dtype": "float32",
                        "shape": ["batch", "routes", len(ROUTE_FEATURES)],
                    },
                    {
                        "name": "global",
                        "dtype": "float32",
                        "shape": ["batch", len(GLOBAL_FEATURES)],
                    },
                    {"name": "action_mask", "dtype": "bool", "shape": ["batch", "routes"]},
                ],
                "outputs": [
                    {"name": "action", "dtype": "int64", "shape": ["batch"]},
                    {"name": "scores", "dtype": "float32", "shape": ["batch", "routes"]},
                ],
                "scores": "higher is better; the action is the best allowed route",
            },
            "features": {
                "routes": [{"name": n, "meaning": m} for n, m in ROUTE_FEATURES],
                "global": [{"name": n, "meaning": m} for n, m in GLOBAL_FEATURES],
            },
            "state": {"format": STATE_FORMAT},
            "guard": {
                "rule": "fall back when a feature of the decision (global, or of an allowed "
                "route) lies outside [low - margin, high + margin] of the training data's "
                "0.1 %-99.9 % range",
                "margin": 0.5,
                "routes": ranges["routes"],
                "global": ranges["global"],
            },
            "fallback": {
                "policy": fallback,
                "used_when": "a metric is missing or invalid, the guard fires, the model "
                "fails, or no route is allowed",
            },
            "parity": {"decisions": total, "onnx_agree": agree, "max_abs_score_diff": max_diff},
            "golden": {
                "file": "golden.jsonl",
                "topologies": "topologies.json",
                "lines": len(golden_lines),
            },
            "run": provenance.get("summary", {}),
            "versions": package_versions("torch", "onnx", "onnxruntime", "numpy"),
        }
        files = {p.name: sha256(p) for p in sorted(work.iterdir()) if p.name != "manifest.json"}
        manifest["files"] = files
        manifest["content_hash"] = content_hash(files, manifest)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


__all__ = ["ROUTE_BUNDLE_FORMAT", "export_route_bundle", "write_route_onnx"]
