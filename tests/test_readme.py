"""README is the front door: short, its links resolve, and the scenarios and bundle it is
built around are shipped."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_short() -> None:
    assert len(README.splitlines()) <= 250


def test_every_link_and_anchor_in_readme_resolves() -> None:
    links = re.findall(r"\]\(([^)]+)\)", README)
    assert links
    headings = {
        re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", README, re.M)
    }
    for link in links:
        if link.startswith("#"):
            assert link[1:] in headings, link
        else:
            assert (ROOT / link).exists(), link


def test_scenarios_named_in_readme_are_shipped() -> None:
    shipped = {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    shipped |= {p.stem for p in (ROOT / "configs" / "suite").rglob("*.yaml")}
    named = set(re.findall(r"`([a-z0-9_]+)`", README))
    for name in ("paper_prfaas", "colocated_offload", "large_poisson", "paper_poisson"):
        assert name in named and name in shipped, name
    assert (ROOT / "prfaas_env" / "pretrained" / "generalist" / "manifest.json").is_file()
