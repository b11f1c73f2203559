"""A policy bundle on disk (written by ``python -m prfaas_env.export``), read and checked.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prfaas_env.env.live import STATE_FORMAT, LiveState
from prfaas_env.errors import ConfigError, load_folder_json
from prfaas_env.sim.topology import parse_topology

BUNDLE_FORMAT = 1
REQUIRED_FILES = ("policy.onnx", "policy.pt", "state.schema.json", "golden.jsonl")


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


def content_hash(files: dict[str, str]) -> str:
    """One hash over the per-file hashes (names sorted), identifying the bundle's content."""
    text = "".join(f"{name}:{digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def load_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Read and check a bundle folder (BundleError naming the problem; see module docstring)."""
    root = Path(path)
    mpath = root / "manifest.json"
    manifest = load_folder_json(
        root, "manifest.json", "bundle", "python -m prfaas_env.export", BundleError
    )
    fmt = manifest.get("format")
    if fmt != BUNDLE_FORMAT:
        raise BundleError(
            f"{mpath}: bundle format {fmt!r}; this version of prfaas-env reads format "
            f"{BUNDLE_FORMAT} (re-export the run with this version)"
        )
    for key in ("observation", "actions", "fallback", "topology", "files", "model", "state"):
        if key not in manifest:
            raise BundleError(f"{mpath}: key {key!r} is missing")
    if manifest["state"].get("format") != STATE_FORMAT:
        raise BundleError(
            f"{mpath}: state.format {manifest['state'].get('format')!r}; this version reads "
            f"{STATE_FORMAT}"
        )
    files: dict[str, str] = manifest["files"]
    for name in REQUIRED_FILES:
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
    if manifest.get("content_hash") != content_hash(files):
        raise BundleError(f"{mpath}: content_hash does not match the listed files")
    try:
        topo = parse_topology(manifest["topology"], f"{mpath}: topology")
    except ConfigError as exc:
        raise BundleError(str(exc)) from exc
    live = LiveState(
        topo,
        float(manifest["observation"]["expected_output_tokens"]),
        bool(manifest["observation"].get("admission_control", False)),
    )
    bundle = Bundle(root, manifest, live)
    here = [f.name for f in live.encoder.features()]
    if bundle.features != here:
        first = next(
            (i for i, (a, b) in enumerate(zip(bundle.features, here, strict=False)) if a != b),
            min(len(here), len(bundle.features)),
        )
        raise BundleError(
            f"{mpath}: the manifest lists {len(bundle.features)} features, this version's "
            f"encoder makes {len(here)} for the bundle's topology (first difference at index "
            f"{first}); re-export the run with this version"
        )
    if bundle.actions != [*topo.route_labels(), *(["reject"] if live.admission_control else [])]:
        raise BundleError(f"{mpath}: actions {bundle.actions} do not match the topology's routes")
    return bundle
