"""The package's shape: each layer imports only the layers below it, there is no import circle,
the library never imports the training application, and the router loads no simulator."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sim_scenarios import ROOT

# Layers from the bottom up; a module belongs to the first prefix it starts with. A module may
# import modules of its own layer or of layers below.
LAYERS: list[tuple[str, ...]] = [
    (
        "prfaas_env.errors",
        "prfaas_env.user_cache",
        "prfaas_env.hardware",
        "prfaas_env.architecture",
        "prfaas_env.costmodel",
    ),
    # calibration: the cost model's fit, and its end-to-end validation replaying measured
    # benchmarks through the simulator
    (
        "prfaas_env.sim",
        "prfaas_env.traces",
        "prfaas_env.workloads",
        "prfaas_env.suite",
        "prfaas_env.calibration",
    ),
    ("prfaas_env.observation",),
    ("prfaas_env.env", "prfaas_env.policies"),
    (
        "prfaas_env.evaluation",
        "prfaas_env.suite_eval",
        "prfaas_env.report",
        "prfaas_env.router",
        "prfaas_env.integrations",
        "prfaas_env.export",
        "prfaas_env.gateway",
    ),
    ("agents", "train", "evaluate", "export"),
]
PACKAGE_ROOT = "prfaas_env"  # the package's own __init__: version and env registration


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [*(ROOT / "prfaas_env").rglob("*.py"), *(ROOT / "agents").rglob("*.py")]
    files += [ROOT / f"{name}.py" for name in ("train", "evaluate", "export")]
    return {_module_name(f): f for f in files}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (module level or inside
    functions), resolved to modules: ``from a.b import c`` is ``a.b.c`` when that is a
    module, else ``a.b``."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _layer(name: str) -> int:
    if name == PACKAGE_ROOT:
        return 0
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{name}: not in any layer of tests/test_layers.py; add it")


GRAPH = {n: _imports(n, p, set(_sources())) for n, p in _sources().items()}


def test_every_module_imports_only_its_layer_and_below() -> None:
    wrong = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, deps in GRAPH.items()
        for b in deps
        if _layer(b) > _layer(a)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_library_never_imports_the_training_application() -> None:
    app = ("agents", "train", "evaluate", "export")
    wrong = [
        f"{a} imports {b}"
        for a, deps in GRAPH.items()
        if a.startswith(PACKAGE_ROOT)
        for b in deps
        if b.split(".")[0] in app
    ]
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_circle() -> None:
    """No module reaches itself through imports (a package's ``__init__`` importing its own
    submodules is no circle unless a submodule imports the package back)."""
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(GRAPH.get(n, ())):
            if state.get(m) == 1:
                circles.append([*stack[stack.index(m) :], m])
            elif m not in state:
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(GRAPH):
        if n not in state:
            visit(n, [])
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def _loaded_after(statement: str) -> set[str]:
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


HEAVY = (
    "gymnasium",
    "torch",
    "stable_baselines3",
    "prfaas_env.sim.engine",
    "prfaas_env.sim.kernel",
    "prfaas_env.sim.view",
    "prfaas_env.env.vector",
)


@pytest.mark.parametrize(
    "statement",
    [
        "import prfaas_env.router",
        "import prfaas_env.router.__main__, prfaas_env.router.server",
    ],
)
def test_the_router_loads_neither_gymnasium_nor_the_simulators_engine(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_gymnasium_finds_the_env_whichever_is_imported_first() -> None:
    loaded = _loaded_after(
        "import prfaas_env\nimport gymnasium\nassert 'PrfaaS-v0' in gymnasium.registry"
    )
    assert "gymnasium" in loaded
    _loaded_after("import gymnasium\nimport prfaas_env\nassert 'PrfaaS-v0' in gymnasium.registry")
