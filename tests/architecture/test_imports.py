"""The package's shape, enforced: no import cycles (imports inside functions count), rich only in the CLI, no
library module importing the CLI, a small package root, and no function-level imports in modules that already
import torch at the top. Each failure names the offending module and edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "medpipe"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[tuple[ast.stmt, bool]]:
    """Every import statement with whether it sits at module top level (TYPE_CHECKING blocks excluded)."""
    found: list[tuple[ast.stmt, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, top)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, top))
            nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
            visit(child, top and not nested)

    visit(tree, True)
    return found


def _resolve(module: str, node: ast.stmt) -> list[str]:
    """Imported names as module names ('external' modules kept as given)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        pkg = module.split(".")
        if not MODULES[module].name == "__init__.py":
            pkg = pkg[:-1]
        pkg = pkg[: len(pkg) - node.level + 1]
        base = ".".join(pkg + ([base] if base else []))
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in MODULES else base)
    return out


EDGES: dict[str, set[str]] = {}
TOP_IMPORTS: dict[str, set[str]] = {}
LOCAL_IMPORTS: dict[str, list[tuple[int, str]]] = {}
for _name, _path in MODULES.items():
    _tree = ast.parse(_path.read_text(), str(_path))
    for _node, _top in _imports(_tree):
        for target in _resolve(_name, _node):
            EDGES.setdefault(_name, set())
            if target.startswith("medpipe") and target in MODULES and target != _name:
                EDGES[_name].add(target)
            (TOP_IMPORTS if _top else {}).setdefault(_name, set()).add(target)
            if not _top:
                LOCAL_IMPORTS.setdefault(_name, []).append((_node.lineno, target))


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(EDGES.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles() -> None:
    cycles = _cycles()
    described = []
    for comp in cycles:
        edges = sorted(f"{a} -> {b}" for a in comp for b in EDGES.get(a, ()) if b in comp)
        described.append("; ".join(edges))
    assert not cycles, "import cycles (edges inside each cycle):\n" + "\n".join(described)


def test_rich_only_in_the_cli() -> None:
    bad = sorted(f"{m} imports {t}" for m in MODULES if not m.startswith("medpipe.cli")
                 for t in TOP_IMPORTS.get(m, set()) | {x for _, x in LOCAL_IMPORTS.get(m, [])}
                 if t == "rich" or t.startswith("rich."))
    assert not bad, "\n".join(bad)


def test_library_never_imports_the_cli() -> None:
    bad = sorted(f"{m} -> {t}" for m, ts in EDGES.items() if not m.startswith("medpipe.cli")
                 and m not in ("medpipe.__main__",) for t in ts if t.startswith("medpipe.cli"))
    assert not bad, "\n".join(bad)


def test_package_root_stays_small() -> None:
    root_modules = sorted(p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(root_modules) <= 10, root_modules


#: Optional dependencies (extras): imported where used, so that medpipe works without them.
OPTIONAL = ("onnx", "onnxruntime", "rt_utils", "dynamic_network_architectures", "nnunetv2", "cv2")


def _optional(target: str) -> bool:
    """An optional dependency, or a medpipe module that imports one at its top."""
    if target.split(".")[0] in OPTIONAL:
        return True
    return any(t.split(".")[0] in OPTIONAL for t in TOP_IMPORTS.get(target, set()))


def test_no_local_imports_in_modules_that_import_torch_at_the_top() -> None:
    bad = sorted(f"{m}:{line} imports {t} inside a function" for m, items in LOCAL_IMPORTS.items()
                 if "torch" in TOP_IMPORTS.get(m, set()) for line, t in items if not _optional(t))
    assert not bad, "\n".join(bad)


def _loaded_at_import(module: str) -> set[str]:
    """The medpipe modules importing ``module`` loads: its top-level imports, their packages, and theirs in turn."""
    seen: set[str] = set()
    stack = [module]
    while stack:
        for target in TOP_IMPORTS.get(stack.pop(), set()):
            parts = target.split(".")
            for name in (".".join(parts[:i]) for i in range(2, len(parts) + 1)):
                if name in MODULES and name not in seen:
                    seen.add(name)
                    stack.append(name)
    return seen


def test_function_level_imports_buy_something() -> None:
    """A function-level import of the standard library, or of a medpipe module that importing this module loads
    anyway, defers nothing: it belongs at the top (fast ``--help`` and optional dependencies are what buy)."""
    import sys

    bad = sorted(f"{m}:{line} imports {t} inside a function ({why})" for m, items in LOCAL_IMPORTS.items()
                 for line, t in items
                 for why in [("standard library" if t.split(".")[0] in sys.stdlib_module_names else
                              "loaded at import anyway" if t in _loaded_at_import(m) else "")] if why)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("command", [["--help"], ["infer", "--help"], ["train", "--help"]])
def test_help_imports_neither_torch_nor_monai(command: list[str]) -> None:
    import subprocess
    import sys

    code = ("import sys; from medpipe.cli import app; from typer.testing import CliRunner; "
            f"r = CliRunner().invoke(app, {command!r}); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'monai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, in a fresh medpipe namespace: a cycle through a package ``__init__`` (which the
    static graph above cannot see) fails here with its ImportError."""
    import subprocess
    import sys

    code = (
        "import importlib, sys\n"
        f"names = {sorted(MODULES)!r}\n"
        "bad = []\n"
        "for name in names:\n"
        "    if name.endswith('__main__'):\n"
        "        continue\n"
        "    for m in [m for m in sys.modules if m == 'medpipe' or m.startswith('medpipe.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as err:\n"
        "        bad.append(f'{name}: {err}')\n"
        "print('\\n'.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert not out.stdout.strip(), out.stdout


#: What each part must never import (docs/architecture.md): data flows one way, files -> case -> network ->
#: source grid -> outputs -> evaluation, and only the CLI and the pipeline sit above the stages.
STAGES = {"io", "datasets", "models", "training", "inference", "evaluation", "batch", "explain", "pipeline", "cli"}
FORBIDDEN: dict[str, set[str]] = {
    "errors": STAGES, "runtime": STAGES, "config": STAGES, "labels": STAGES, "transforms": STAGES,
    "io": STAGES - {"io"},
    "models": STAGES - {"models", "io"},
    "datasets": STAGES - {"datasets", "io", "models"},
    "evaluation": STAGES - {"evaluation", "io"},
    "inference": {"training", "datasets", "batch", "explain", "pipeline", "cli"},
    "training": {"inference", "batch", "explain", "pipeline", "cli"},
    "batch": {"training", "explain", "pipeline", "cli"},
    "explain": {"training", "batch", "pipeline", "cli"},
    "pipeline": {"batch", "explain", "cli"},
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "medpipe"


def test_each_part_imports_only_what_it_may() -> None:
    bad = sorted(f"{a} -> {b}" for a, targets in EDGES.items() for b in targets
                 if _part(b) in FORBIDDEN.get(_part(a), set()))
    assert not bad, "imports against the layering of docs/architecture.md:\n" + "\n".join(bad)


def test_readme_layout_and_architecture_doc_name_every_part() -> None:
    """README's layout block and docs/architecture.md's table name every package and root module there is."""
    repo = ROOT.parent
    readme = (repo / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    arch = (repo / "docs" / "architecture.md").read_text()
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    modules = sorted(p.name for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert "docs/architecture.md" in layout
    missing = [f"README layout: {p}/" for p in packages if f"{p}/" not in layout]
    missing += [f"README layout: {m}" for m in modules if m not in layout]
    missing += [f"docs/architecture.md: `{p}/`" for p in packages if f"`{p}/`" not in arch]
    missing += [f"docs/architecture.md: `{m}`" for m in modules if f"`{m}`" not in arch]
    assert not missing, "\n".join(missing)
