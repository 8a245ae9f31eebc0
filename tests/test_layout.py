"""The house in wings: lower wings never import higher ones, no module imports in a circle, the
public API is the top-level package, and no module grows past about 700 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import medsr

PACKAGE = Path(medsr.__file__).parent
# lowest first: a wing may import its own modules and those of the wings before it
WINGS = ("core", "nets", "formats", "models", "engine", "training", "evaluation", "web", "cli")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("medsr",) + parts).removesuffix(".__init__")
        found[name] = path
    return found


def _runtime_imports(path: Path) -> set[str]:
    """medsr modules that ``path`` imports when it runs (imports under ``if TYPE_CHECKING`` left out)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree)
               if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medsr"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("medsr"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _runtime_imports(path) if m in modules and m != name} for name, path in modules.items()}


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else None


def test_lower_wings_never_import_higher_ones():
    upward = []
    for module, imported in _graph().items():
        wing = _wing(module)
        for target in imported:
            other = _wing(target)
            if wing and (other is None or WINGS.index(other) > WINGS.index(wing)):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_every_module_lives_in_a_wing():
    loose = [name for name in _modules() if name != "medsr" and _wing(name) is None]
    assert loose == []


def test_no_import_circles():
    graph = _graph()
    # a package's __init__ importing its own modules is not a circle of modules
    edges = {m: {t for t in ts if not m.startswith(t + ".") and not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert circles == []


def test_modules_stay_readable():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 720}
    assert long == {}


def test_each_wing_says_what_lives_there():
    for wing in WINGS:
        doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text()))
        assert doc and len(doc) > 150, wing


def test_public_api_is_the_top_level_package():
    for name in medsr.__all__:
        assert getattr(medsr, name) is not None
    # what the README shows
    for name in ("upscale", "load_model", "read_volume", "write_volume", "read_image", "write_image",
                 "plan_outputs", "upscale_files", "SRModel", "Volume", "Image"):
        assert name in medsr.__all__
    assert callable(medsr.upscale) and callable(medsr.load_model)
