"""The router for per-route bundles: one network for any topology, with a guard and a fallback.

A per-route bundle (:mod:`prfaas_env.export.route_bundle`) carries no topology: the router
gets the deployment's (its clusters, datacenters and links, as a scenario file's
``topology:`` mapping or a parsed :class:`~prfaas_env.sim.topology.Topology`), its TTFT SLO
and the expected output length. Each decision parses the live state with the same code as
the flat router (:class:`~prfaas_env.observation.live.LiveState`), computes the per-route
form (:mod:`prfaas_env.observation.per_route`) and runs ``policy.onnx``. The manifest's
fallback heuristic decides instead, and the decision says why, when a metric is missing or
invalid, when the **guard** fires (a feature of the decision, or of an allowed route, lies
outside the range the training data covered, widened by the manifest's margin: traffic
unlike what the policy learned on), when the model fails, or when no route is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env import __version__ as PACKAGE_VERSION
from prfaas_env.errors import ConfigError, load_folder_json
from prfaas_env.observation.live import STATE_FORMAT, LiveState, LiveStateError
from prfaas_env.observation.per_route import (
    GLOBAL_FEATURES,
    ROUTE_FEATURES,
    RouteForm,
    route_features,
)
from prfaas_env.policies import Policy, RouteTable, make_policy
from prfaas_env.router.bundle import STATELESS_FALLBACKS, BundleError, check_files
from prfaas_env.router.core import Decision, finish_decisions, run_model
from prfaas_env.router.pretrained import resolve_bundle
from prfaas_env.sim.topology import Topology, parse_topology

ROUTE_BUNDLE_FORMAT = 1  # per-route bundles this version reads and writes
REQUIRED_FILES = ("policy.onnx", "golden.jsonl", "topologies.json")


@dataclass(frozen=True)
class RouteBundle:
    """A checked per-route bundle: its folder and manifest."""

    path: Path
    manifest: dict[str, Any]

    def file(self, name: str) -> Path:
        return self.path / name

    def topologies(self) -> dict[str, dict[str, Any]]:
        """The topologies (with TTFT SLO and expected output) of the golden lines."""
        data: dict[str, dict[str, Any]] = json.loads(self.file("topologies.json").read_text())
        return data


def is_route_bundle(path: str | Path) -> bool:
    """Whether ``path`` holds a per-route bundle (its manifest says ``form: routes``)."""
    try:
        return json.loads((Path(path) / "manifest.json").read_text()).get("form") == "routes"
    except (OSError, ValueError, AttributeError):
        return False


def load_route_bundle(path: str | Path, verify_hashes: bool = True) -> RouteBundle:
    """Read and check a per-route bundle (BundleError naming the file and the problem)."""
    root = Path(path)
    mpath = root / "manifest.json"
    m = load_folder_json(
        root, "manifest.json", "bundle", "agents/generalist.py export", BundleError
    )
    if m.get("form") != "routes" or m.get("format") != ROUTE_BUNDLE_FORMAT:
        raise BundleError(
            f"{mpath}: not a per-route bundle of format {ROUTE_BUNDLE_FORMAT} (form "
            f"{m.get('form')!r}, format {m.get('format')!r})"
        )
    for key in ("features", "guard", "fallback", "files", "versions", "state"):
        if not isinstance(m.get(key), dict):
            raise BundleError(f"{mpath}: {key!r} must be a JSON object")
    exported = str(m["versions"].get("prfaas-env"))
    if exported.split(".")[:2] != PACKAGE_VERSION.split(".")[:2]:
        raise BundleError(
            f"{mpath}: exported with prfaas-env {exported}; this is {PACKAGE_VERSION} (bundles "
            "load within one major.minor release)"
        )
    if m["state"].get("format") != STATE_FORMAT:
        raise BundleError(
            f"{mpath}: state.format {m['state'].get('format')!r}; this reads {STATE_FORMAT}"
        )
    names = {
        "routes": [f.get("name") for f in m["features"].get("routes", [])],
        "global": [f.get("name") for f in m["features"].get("global", [])],
    }
    for key, here in (("routes", ROUTE_FEATURES), ("global", GLOBAL_FEATURES)):
        want = [n for n, _ in here]
        if names[key] != want:
            raise BundleError(
                f"{mpath}: features.{key} are {names[key]}; this version computes {want} "
                "(re-export with this version)"
            )
        ranges = m["guard"].get(key)
        if not isinstance(ranges, list) or len(ranges) != len(want):
            raise BundleError(f"{mpath}: guard.{key} must hold one [low, high] per feature")
    if m["fallback"].get("policy") not in STATELESS_FALLBACKS:
        raise BundleError(
            f"{mpath}: fallback.policy {m['fallback'].get('policy')!r}; allowed: "
            f"{', '.join(STATELESS_FALLBACKS)}"
        )
    check_files(root, m, REQUIRED_FILES, verify_hashes)
    return RouteBundle(root, m)


class RouteRouter:
    """Routes live states of one deployment with a per-route bundle (see the module docstring).

    Args:
        bundle: a per-route bundle folder or a loaded :class:`RouteBundle`.
        topology: the deployment's topology (a ``topology:`` mapping or a Topology).
        ttft_slo_s: the deployment's TTFT SLO, s (the features' time scale).
        expected_output_tokens: the default of ``request.expected_output_tokens``.
        guard: apply the guard (True; False only to measure what the policy alone does).
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(
        self,
        bundle: str | Path | RouteBundle,
        topology: Mapping[str, Any] | Topology,
        ttft_slo_s: float,
        expected_output_tokens: float,
        guard: bool = True,
        threads: int = 1,
    ) -> None:
        import onnxruntime as ort

        self.bundle = bundle if isinstance(bundle, RouteBundle) else load_route_bundle(bundle)
        topo = (
            topology
            if isinstance(topology, Topology)
            else parse_topology(dict(topology), "topology")
        )
        if not ttft_slo_s > 0:
            raise ConfigError(f"ttft_slo_s: expected a positive number, got {ttft_slo_s!r}")
        self.live = LiveState(topo, expected_output_tokens)
        self.form = RouteForm.of(topo, ttft_slo_s)
        self.labels = list(self.live.routes.labels)
        g = self.bundle.manifest["guard"]
        margin = float(g.get("margin", 0.0))
        widen = np.array([[-margin], [margin]])
        self._lo_r, self._hi_r = np.array(g["routes"], float).T + widen
        self._lo_g, self._hi_g = np.array(g["global"], float).T + widen
        self.guard = guard
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        path = self.bundle.file("policy.onnx")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
            raise BundleError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        names = sorted(i.name for i in self.session.get_inputs())
        if names != sorted(["routes", "global", "action_mask"]):
            raise BundleError(f"{path}: inputs are {names}; expected routes, global, action_mask")
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(outputs) != ["action", "scores"]:
            raise BundleError(f"{path}: outputs are {outputs}; expected action and scores")
        fb = self.bundle.manifest["fallback"]["policy"]
        # Mooncake's estimate reads the view's prefill times (the topology's cost tables,
        # within 0.2 % of the exact model) rather than evaluating the model per decision
        params: dict[str, Any] = (
            {"ttft_slo_s": ttft_slo_s, "prefill_estimate": "tables"} if fb == "mooncake" else {}
        )
        self.fallback: Policy = make_policy(fb, RouteTable.from_topology(topo), topo, **params)
        self.fallback.reset(1)
        self.guard_fired = 0
        self.decisions = 0
        self._self_test()
        self.guard_fired = 0  # the self-test's decisions are not counted
        self.decisions = 0

    def _self_test(self, lines: int = 8) -> None:
        """Replay the first golden lines of the bundle's first topology through this
        session (BundleError unless the model decides each as recorded); this also warms
        both the model's and the fallback's paths up before the first real request."""
        tops = self.bundle.topologies()
        if not tops:
            raise BundleError(f"{self.bundle.file('topologies.json')}: no topologies")
        name, t = next(iter(tops.items()))
        probe = LiveState(parse_topology(t["topology"], "topology"), t["expected_output_tokens"])
        form = RouteForm.of(probe.topology, t["ttft_slo_s"])
        golden = [
            json.loads(x)
            for x in self.bundle.file("golden.jsonl").read_text().splitlines()
            if x.strip()
        ]
        golden = [g for g in golden if g.get("topology") == name][:lines]
        if not golden:
            raise BundleError(f"{self.bundle.file('golden.jsonl')}: no lines for {name!r}")
        parsed = probe.parse([g["state"] for g in golden])
        routes, glob = route_features(form, parsed.view, parsed.mask)
        allowed = np.ascontiguousarray(parsed.mask[:, : form.num_routes])
        action, _ = self.session.run(
            ["action", "scores"], {"routes": routes, "global": glob, "action_mask": allowed}
        )
        for k, (g, a) in enumerate(zip(golden, action.tolist(), strict=True)):
            if a != int(g["action"]):
                raise BundleError(
                    f"{self.bundle.file('golden.jsonl')}: {name} line {k + 1}: the model chose "
                    f"{a}, the bundle recorded {g['action']}"
                )
        self.decide({"request": {"input_tokens": 1024}})  # the fallback's path

    def out_of_range(
        self, routes: NDArray[np.float32], glob: NDArray[np.float32], mask: NDArray[np.bool_]
    ) -> list[str | None]:
        """Per decision, the first feature outside the guard's range (None: all inside)."""
        out: list[str | None] = []
        bad_g = (glob < self._lo_g) | (glob > self._hi_g)
        bad_r = ((routes < self._lo_r) | (routes > self._hi_r)) & mask[:, :, None]
        for i in range(len(glob)):
            if bad_g[i].any():
                j = int(np.argmax(bad_g[i]))
                name = GLOBAL_FEATURES[j][0]
                out.append(f"guard: global {name} = {glob[i, j]:.3g} outside its training range")
            elif bad_r[i].any():
                r, j = np.argwhere(bad_r[i])[0]
                out.append(
                    f"guard: route {self.labels[r]} {ROUTE_FEATURES[j][0]} = {routes[i, r, j]:.3g} "
                    "outside its training range"
                )
            else:
                out.append(None)
        return out

    def decide(self, state: Mapping[str, Any]) -> Decision:
        """Route one live state (LiveStateError when it has no usable input length)."""
        return self.decide_many([state])[0]

    def decide_many(self, states: Sequence[Mapping[str, Any]]) -> list[Decision]:
        parsed = self.live.parse(states)
        reasons: list[str | None] = ["; ".join(p) if p else None for p in parsed.problems]
        return self._decide(parsed.view, parsed.mask, reasons)

    def act_view(self, view: Mapping[str, NDArray], mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        """Actions on a batch of complete views (evaluation: no live-state parsing)."""
        return np.array([d.action for d in self._decide(view, mask, [None] * len(mask))], np.int64)

    def _decide(
        self, view: Mapping[str, NDArray], mask: NDArray[np.bool_], reasons: list[str | None]
    ) -> list[Decision]:
        routes, glob = route_features(self.form, view, mask)
        allowed = np.ascontiguousarray(mask[:, : self.form.num_routes])
        if self.guard:
            for i, why in enumerate(self.out_of_range(routes, glob, allowed)):
                if why is not None and reasons[i] is None:
                    reasons[i] = why
                    self.guard_fired += 1
        self.decisions += len(reasons)
        feeds = {"routes": routes, "global": glob, "action_mask": allowed}
        chosen, rows, reasons = run_model(
            lambda: self.session.run(["action", "scores"], feeds), reasons
        )
        return finish_decisions(self.labels, chosen, rows, reasons, allowed, view, self.fallback)


def replay_golden(bundle: str | Path | RouteBundle) -> tuple[int, list[str]]:
    """Route every golden line with a router built for its topology: the number replayed
    and a message per line not decided as recorded (by the model)."""
    b = bundle if isinstance(bundle, RouteBundle) else load_route_bundle(bundle)
    tops = b.topologies()
    routers: dict[str, RouteRouter] = {}
    wrong, count = [], 0
    for k, text in enumerate(b.file("golden.jsonl").read_text().splitlines()):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            t = tops[line["topology"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{b.file('golden.jsonl')}: line {k + 1}: unreadable: {exc}") from exc
        name = line["topology"]
        if name not in routers:
            routers[name] = RouteRouter(
                b, t["topology"], t["ttft_slo_s"], t["expected_output_tokens"], guard=False
            )
        try:
            d = routers[name].decide(line["state"])
        except LiveStateError as exc:
            raise BundleError(f"{b.file('golden.jsonl')}: line {k + 1}: {exc}") from exc
        count += 1
        if d.source != "model" or d.action != int(line["action"]):
            wrong.append(
                f"line {k + 1} ({name}): expected action {line['action']}, got {d.action} "
                f"({d.reason})"
            )
    if count == 0:
        raise BundleError(f"{b.file('golden.jsonl')}: no golden lines")
    return count, wrong


class RouteBundlePolicy(Policy):
    """A per-route bundle as a routing :class:`~prfaas_env.policies.Policy` on simulator
    views (``evaluate.py --agent pretrained:NAME`` or a bundle folder): the ONNX graph a
    deployed router runs, with its guard and fallback; :meth:`stats` says how often the guard
    sent a decision to the fallback."""

    def __init__(self, router: RouteRouter, label: str) -> None:
        super().__init__(router.live.routes, router.live.topology)
        self.router = router
        self.name = label

    def act(self, view: Mapping[str, NDArray], mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        return self.router.act_view(view, mask)

    def stats(self) -> dict[str, float]:
        r = self.router
        return {"guard_fired": r.guard_fired / max(r.decisions, 1)}


def bundle_policy_for(
    scenario: Any, path: str | Path, label: str | None = None, guard: bool = True
) -> RouteBundlePolicy:
    """The per-route bundle at ``path`` (or ``pretrained:NAME``) as a policy on ``scenario``
    (its topology, TTFT SLO and mean output length). The scenario comes first, as for
    every policy builder a suite evaluation calls."""
    root = resolve_bundle(path)
    router = RouteRouter(
        root,
        scenario.topology,
        scenario.ttft_slo_s,
        scenario.workload.mean_output_tokens(),
        guard=guard,
    )
    return RouteBundlePolicy(router, label or f"bundle:{Path(str(path)).name}")
