"""A policy bundle on disk, read and checked (written by ``prfaas_env.export.export_bundle``;
``python export.py`` for a train.py run).

Files::

    manifest.json      what the model reads and returns: features (unit, normalisation, the
                       engine metric each comes from), actions, fallback heuristic, topology,
                       parity figures, versions, a SHA-256 per file and a content hash
    policy.onnx        the policy graph (opset <= 17, float32; normalisation and masking inside)
    policy.pt          the same graph as TorchScript
    state.schema.json  JSON Schema of the live state the router takes
    golden.jsonl       live states with their observation, mask, scores and expected action
    distilled.yaml     knob settings of existing routers that imitate the policy (optional)

:func:`load_bundle` refuses a bundle with a missing or altered file, another bundle format, a
model whose input size differs from the manifest's feature list, or features that this version
of the encoder would compute differently; each message names the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prfaas_env import __version__ as PACKAGE_VERSION
from prfaas_env.errors import ConfigError, first_difference, load_folder_json
from prfaas_env.observation.live import STATE_FORMAT, LiveState
from prfaas_env.sim.topology import parse_topology

BUNDLE_FORMAT = 1
REQUIRED_FILES = ("policy.onnx", "policy.pt", "state.schema.json", "golden.jsonl")
# Heuristics a router can run per request with no state of its own (fallback candidates).
STATELESS_FALLBACKS = (
    "mooncake",
    "prfaas_threshold",
    "dynamo",
    "llm_d",
    "lmetric",
    "least_loaded",
    "sglang_cache_aware",
    "always_local",
    "always_remote",
)


class BundleError(ConfigError):
    """A bundle that cannot be loaded; the message names the file and the problem."""


@dataclass(frozen=True)
class Bundle:
    """A checked bundle: its folder, manifest and the live-state converter of its topology."""

    path: Path
    manifest: dict[str, Any]
    live: LiveState

    @property
    def features(self) -> list[str]:
        return [f["name"] for f in self.manifest["observation"]["features"]]

    @property
    def actions(self) -> list[str]:
        return [a["label"] for a in self.manifest["actions"]]

    def file(self, name: str) -> Path:
        return self.path / name


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(files: dict[str, str], manifest: dict[str, Any]) -> str:
    """One hash over the per-file hashes (names sorted) and the manifest's own content
    (without ``files`` and ``content_hash``), identifying everything the router reads."""
    body = {k: v for k, v in manifest.items() if k not in ("files", "content_hash")}
    text = "".join(f"{name}:{digest}\n" for name, digest in sorted(files.items()))
    text += json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_files(
    root: Path, manifest: dict[str, Any], required: Sequence[str], verify_hashes: bool = True
) -> None:
    """BundleError unless ``manifest["files"]`` lists every ``required`` file, each listed
    file exists in ``root`` (with its SHA-256 when ``verify_hashes``), and the manifest's
    ``content_hash`` matches (any bundle kind: flat or per-route)."""
    mpath = root / "manifest.json"
    files: dict[str, str] = manifest["files"]
    for name in required:
        if name not in files:
            raise BundleError(f"{mpath}: files lists no {name}")
    for name, digest in files.items():
        p = root / name
        if not p.is_file():
            raise BundleError(f"{root}: {name} is missing (listed in manifest.json)")
        if verify_hashes and sha256(p) != digest:
            raise BundleError(
                f"{p}: SHA-256 differs from manifest.json (the file was changed after export)"
            )
    if manifest.get("content_hash") != content_hash(files, manifest):
        raise BundleError(
            f"{mpath}: content_hash does not match the manifest and the listed files (the "
            f"manifest was edited after export)"
        )


def _section(manifest: dict[str, Any], key: str, kind: type, where: Path) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind):
        raise BundleError(
            f"{where}: {key!r} must be a JSON {'object' if kind is dict else 'array'}, got "
            f"{type(value).__name__}"
        )
    return value


def _release(version: str) -> str:
    """``major.minor`` of a version string."""
    return ".".join(str(version).split(".")[:2])


def load_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Read and check a bundle folder (BundleError naming the problem; see module docstring)."""
    root = Path(path)
    mpath = root / "manifest.json"
    manifest = load_folder_json(
        root, "manifest.json", "bundle", "python export.py --run RUN --out DIR", BundleError
    )
    fmt = manifest.get("format")
    if fmt != BUNDLE_FORMAT:
        raise BundleError(
            f"{mpath}: bundle format {fmt!r}; this version of prfaas-env reads format "
            f"{BUNDLE_FORMAT} (re-export the run with this version)"
        )
    for key in ("observation", "fallback", "topology", "files", "model", "state", "versions"):
        _section(manifest, key, dict, mpath)
    _section(manifest, "actions", list, mpath)
    exported = str(manifest["versions"].get("prfaas-env"))
    if _release(exported) != _release(PACKAGE_VERSION):
        raise BundleError(
            f"{mpath}: exported with prfaas-env {exported}; this is {PACKAGE_VERSION} "
            f"(bundles load within one major.minor release; re-export the run)"
        )
    if manifest["state"].get("format") != STATE_FORMAT:
        raise BundleError(
            f"{mpath}: state.format {manifest['state'].get('format')!r}; this version reads "
            f"{STATE_FORMAT}"
        )
    check_files(root, manifest, REQUIRED_FILES, verify_hashes)
    fallback = manifest["fallback"].get("policy")
    if fallback not in STATELESS_FALLBACKS:
        raise BundleError(
            f"{mpath}: fallback.policy {fallback!r} is not a stateless heuristic; allowed: "
            f"{', '.join(STATELESS_FALLBACKS)}"
        )
    obs = manifest["observation"]
    out_tokens = obs.get("expected_output_tokens")
    if not isinstance(out_tokens, (int, float)) or not out_tokens > 0:
        raise BundleError(f"{mpath}: observation.expected_output_tokens must be a number > 0")
    try:
        topo = parse_topology(manifest["topology"], f"{mpath}: topology")
    except ConfigError as exc:
        raise BundleError(str(exc)) from exc
    live = LiveState(topo, float(out_tokens), bool(obs.get("admission_control", False)))
    bundle = Bundle(root, manifest, live)
    _check_features(obs.get("features"), live, mpath)
    if bundle.actions != topo.action_labels(live.admission_control):
        raise BundleError(f"{mpath}: actions {bundle.actions} do not match the topology's routes")
    return bundle


def _check_features(listed: Any, live: LiveState, mpath: Path) -> None:
    """The manifest's features must be what this version's encoder makes for the topology:
    same names, units, normalisations and state paths, in the same order."""
    keys = ("name", "unit", "normalisation", "state")
    here = [{k: f.get(k) for k in keys} for f in live.feature_sources()]
    if not isinstance(listed, list) or not all(isinstance(f, dict) for f in listed):
        raise BundleError(f"{mpath}: observation.features must be an array of objects")
    there = [{k: f.get(k) for k in keys} for f in listed]
    if there == here:
        return
    first = first_difference(there, here)
    detail = ""
    if first < min(len(here), len(there)):
        diff = [k for k in keys if there[first][k] != here[first][k]]
        detail = (
            f": {diff[0]} {there[first][diff[0]]!r} (bundle) vs {here[first][diff[0]]!r} (here)"
        )
    raise BundleError(
        f"{mpath}: the manifest lists {len(there)} features, this version's encoder makes "
        f"{len(here)} for the bundle's topology; first difference at index {first}{detail}; "
        f"re-export the run with this version"
    )
