"""Bundles shipped with the package (``pretrained:NAME``), in ``prfaas_env/pretrained/NAME``."""

from __future__ import annotations

from pathlib import Path

from prfaas_env.router.bundle import BundleError

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


def pretrained_names() -> list[str]:
    """Names of the bundles shipped with the package (``pretrained:NAME``)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "manifest.json").is_file())


def resolve_bundle(spec: str | Path) -> Path:
    """The folder of a bundle: a path, or ``pretrained:NAME`` for a shipped one (BundleError
    listing the shipped names)."""
    text = str(spec)
    if text.startswith("pretrained:"):
        name = text.split(":", 1)[1]
        if name not in pretrained_names():
            shipped = ", ".join(pretrained_names()) or "none"
            raise BundleError(f"{text}: no such pretrained bundle; shipped: {shipped}")
        return PRETRAINED_DIR / name
    return Path(text)
