"""The layer rule (ARCHITECTURE.md, "Layers"): data flows down, nothing imports upward.

Every `import` in every module of omnidit/ counts, at module level or inside a function (a
deferred import is still a dependency). Each module belongs to a unit (a subpackage, or a group
of top-level modules); a unit may import only units on a lower floor. On top of that: nothing
imports the CLI but `omnidit/__main__.py`, and the demo imports nothing of omnidit outside
itself (it talks HTTP to the service).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "omnidit"

# Bottom to top. A unit imports only units on a strictly lower floor: siblings on one floor
# know nothing of each other. A new subpackage or top-level module must be placed here.
FLOORS = {
    "files": 0,  # omnidit/files.py: atomic writes, for every layer
    "request": 0,  # omnidit/request.py: the request contract's limits and checks, for every layer
    "dit": 1,  # the backbone; parallelism enters through an injected attention hook
    "sampling": 1,  # schedules, samplers, the denoiser convention
    "tokenizers": 1,  # text encoders and the video VAE
    "parallel": 2,  # process groups and sequence-parallel attention under dit/'s hook
    "safety": 1,  # content policy, moderation hook, audit log, AIGC labels (used by generation.py and up)
    "pipeline": 3,  # pipeline.py, pipeline_*.py, generation.py, model_folder.py
    "shapes": 3,  # the procedural world beside the pipeline (it evaluates one; never imports it)
    "training": 4,
    "distill": 5,  # trains students from a teacher: on top of training's loops
    "batch": 5,  # batch jobs on Ray Data
    "serving": 5,  # Ray Serve: API, job store, generator replicas
    "demo": 6,  # a separate process: HTTP only (see DEMO_IMPORTS_NOTHING)
    "cli": 7,  # nothing imports it but omnidit/__main__.py
}
PIPELINE_MODULES = {"pipeline", "generation", "model_folder"}  # and every pipeline_*.py
ROOT_LAZY = {"Pipeline": "pipeline", "Generation": "pipeline"}  # omnidit/__init__.py's lazy re-exports

# Known violations, to be fixed (each by the change named beside it); delete an entry when its
# import is gone. Keys: (file relative to the repository, imported module).
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()

# The explicit promises of ARCHITECTURE.md, which FLOORS must encode.
LOW_LEVEL_KNOW_NOTHING_OF = {
    "dit": {"pipeline", "serving", "batch", "training", "distill", "demo", "cli"},
    "parallel": {"pipeline", "serving", "batch", "training", "distill", "demo", "cli"},
}


def unit_of_module(dotted: str) -> str:
    """omnidit.serving.api -> serving; omnidit.pipeline_config -> pipeline; omnidit -> root."""
    parts = dotted.split(".")
    if parts[0] != "omnidit":
        raise ValueError(dotted)
    if len(parts) == 1:
        return "root"
    name = parts[1]
    if name == "__main__":
        return "main"
    if name in PIPELINE_MODULES or name.startswith("pipeline_"):
        return "pipeline"
    if name.startswith("cli_"):  # the CLI's files before they became the omnidit/cli/ package
        return "cli"
    return name


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The omnidit modules an import statement reaches (absolute, dotted)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "omnidit"]
    base = node.module or ""
    if node.level:  # relative: from the module's own package
        package = module_name(path).split(".")
        if path.name != "__init__.py":
            package.pop()
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    if base.split(".")[0] != "omnidit":
        return []
    if base != "omnidit":
        return [base]
    out = []  # `from omnidit import X`: a submodule, a lazy re-export, or the package's own metadata
    for a in node.names:
        if (PKG / f"{a.name}.py").is_file() or (PKG / a.name / "__init__.py").is_file():
            out.append(f"omnidit.{a.name}")
        elif a.name in ROOT_LAZY:
            out.append(f"omnidit.{ROOT_LAZY[a.name]}")
        else:
            out.append("omnidit")
    return out


def imports() -> list[tuple[str, int, str, str, str]]:
    """(file, line, importing unit, imported module, imported unit) for every omnidit import."""
    rows = []
    for path in sorted(PKG.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        src = unit_of_module(module_name(path))
        rel = str(path.relative_to(PKG.parent))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in resolve(path, node):
                    rows.append((rel, node.lineno, src, target, unit_of_module(target)))
    return rows


def why_not(src: str, dst: str) -> str | None:
    """None if unit `src` may import unit `dst`, else the rule it breaks."""
    if src == dst or dst == "root":  # `import omnidit`, `from omnidit import __version__`
        return None
    if src == "root":
        return None if dst == "pipeline" else "omnidit/__init__.py re-exports the pipeline only"
    if src == "main":
        return None if dst == "cli" else "omnidit/__main__.py only starts the CLI"
    if dst == "cli":
        return "nothing imports the CLI (only omnidit/__main__.py)"
    if src == "demo":
        return "the demo talks HTTP to the service; it imports nothing else of omnidit"
    if dst == "main":
        return "nothing imports omnidit/__main__.py"
    if FLOORS[dst] > FLOORS[src]:
        return f"imports upward ({src} is on floor {FLOORS[src]}, {dst} on floor {FLOORS[dst]})"
    if FLOORS[dst] == FLOORS[src]:
        return f"{src} and {dst} share floor {FLOORS[src]}; siblings do not import each other"
    return None


def test_every_unit_has_a_floor():
    units = {src for _, _, src, _, _ in imports()} | {unit_of_module(module_name(p)) for p in PKG.rglob("*.py")}
    unplaced = sorted(units - set(FLOORS) - {"root", "main"})
    assert not unplaced, f"place these in FLOORS in tests/test_layers.py (see ARCHITECTURE.md): {unplaced}"


def test_floors_keep_the_architecture_promises():
    for low, never in LOW_LEVEL_KNOW_NOTHING_OF.items():
        for high in never:
            assert FLOORS[high] > FLOORS[low], f"FLOORS would let {low}/ import {high}/"


def test_nothing_imports_upward():
    rows = imports()
    found = {}
    for rel, line, src, target, dst in rows:
        if dst not in FLOORS and dst not in ("root", "main"):
            continue  # reported by test_every_unit_has_a_floor
        if src not in FLOORS and src not in ("root", "main"):
            continue
        reason = why_not(src, dst)
        if reason is not None:
            found.setdefault((rel, target), []).append(f"{rel}:{line} imports {target}: {reason}")
    new = sorted(msg for key, msgs in found.items() if key not in KNOWN_VIOLATIONS for msg in msgs)
    fixed = sorted(KNOWN_VIOLATIONS - set(found))
    assert not new, "layer rule broken (ARCHITECTURE.md, Layers):\n" + "\n".join(new)
    assert not fixed, f"fixed, so delete from KNOWN_VIOLATIONS in tests/test_layers.py: {fixed}"


@pytest.mark.parametrize(
    "src,dst,allowed",
    [
        ("pipeline", "dit", True),
        ("serving", "pipeline", True),
        ("cli", "demo", True),
        ("main", "cli", True),
        ("parallel", "dit", True),
        ("dit", "parallel", False),  # dit/ reaches parallelism through the injected hook only
        ("dit", "pipeline", False),
        ("parallel", "pipeline", False),
        ("serving", "cli", False),
        ("demo", "serving", False),
        ("demo", "root", True),
        ("batch", "serving", False),  # siblings
        ("training", "distill", False),
        ("distill", "training", True),
    ],
)
def test_rule_cases(src, dst, allowed):
    assert (why_not(src, dst) is None) == allowed


def test_resolve_handles_relative_and_root_imports():
    path = PKG / "serving" / "api.py"
    tree = ast.parse("from . import jobs\nfrom ..pipeline import Pipeline\nfrom omnidit import Pipeline, __version__\n"
                     "import omnidit.dit.model\nimport numpy\n")
    got = [resolve(path, node) for node in tree.body]
    assert got == [["omnidit.serving"], ["omnidit.pipeline"], ["omnidit.pipeline", "omnidit"],
                   ["omnidit.dit.model"], []]
