"""The layers of lib/clusterlake hold, read from the source: no JVM, and no need to import the code.

Layer order (a lower layer never imports a higher one): errors/config/faults -> kernels (pure
numpy) -> prep -> io -> engine -> algorithms -> quality -> report -> orchestration
(pipeline/update/stream) -> cli; serving/ loads a model and assigns points in-process, so it may
not need Spark or the Spark drivers. Every import counts, module-level or inside a function (a
lazy import is still a dependency), and so does ``importlib.import_module("clusterlake....")``.

Also here: no function in lib/clusterlake is over 100 lines (nested functions count inside their
parent), so that a newcomer can read each step as a unit.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"
PACKAGE = LIB / "clusterlake"
MAX_FUNCTION_LINES = 100

SPARK = ("pyspark", "py4j")
ORCHESTRATION = ("clusterlake.pipeline", "clusterlake.update", "clusterlake.stream", "clusterlake.cli",
                 "clusterlake.run")

# (layer, why, imports it must not make). A prefix matches the module and its submodules.
FORBIDDEN = [
    ("clusterlake.kernels", "kernels are pure numpy", SPARK),
    ("clusterlake.serving", "serving runs without Spark", SPARK),
    ("clusterlake.serving", "serving runs without the Spark drivers and the orchestration",
     ("clusterlake.algorithms", "clusterlake.pipeline", "clusterlake.update", "clusterlake.stream",
      "clusterlake.engine")),
    ("clusterlake.algorithms", "algorithms sit below quality, report and the orchestration",
     ("clusterlake.quality", "clusterlake.report") + ORCHESTRATION),
    ("clusterlake.engine", "the engine knows no algorithm and sits below algorithms, quality and the orchestration",
     ("clusterlake.algorithms", "clusterlake.quality", "clusterlake.report", "clusterlake.serving") + ORCHESTRATION),
    ("clusterlake.prep", "prep sits below io, the engine and everything that uses them",
     ("clusterlake.io", "clusterlake.engine", "clusterlake.algorithms", "clusterlake.quality",
      "clusterlake.report", "clusterlake.serving") + ORCHESTRATION),
    ("clusterlake.quality", "quality sits below the report and the orchestration",
     ("clusterlake.report",) + ORCHESTRATION),
    ("clusterlake.io", "io sits below the engine, algorithms, quality, report and the orchestration",
     ("clusterlake.algorithms", "clusterlake.quality", "clusterlake.report", "clusterlake.engine")
     + ORCHESTRATION),
]
FORBIDDEN += [
    (m, "the orchestration sits below the CLI (the CLI calls it, never the reverse)", ("clusterlake.cli",))
    for m in ORCHESTRATION if m != "clusterlake.cli"
] + [
    ("clusterlake.report", "the report is read back from committed output, below the orchestration", ORCHESTRATION),
] + [
    (m, "the bottom layer (errors, config, faults, stages) imports nothing of the layers above it",
     ("clusterlake.kernels", "clusterlake.prep", "clusterlake.io", "clusterlake.engine", "clusterlake.algorithms",
      "clusterlake.quality", "clusterlake.report", "clusterlake.serving", "clusterlake.session") + ORCHESTRATION)
    for m in ("clusterlake.errors", "clusterlake.config", "clusterlake.faults", "clusterlake.stages")
]
# kernels/ may import nothing of clusterlake but kernels and errors; serving/ only these.
KERNELS_MAY_IMPORT = ("clusterlake.kernels", "clusterlake.errors")
SERVING_MAY_IMPORT = ("clusterlake.serving", "clusterlake.kernels", "clusterlake.prep", "clusterlake.io",
                      "clusterlake.errors")


# --------------------------------------------------------------------------- reading imports


def _module_name(path: Path, root: Path = LIB) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module of ``from <node.module> import ...`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _dynamic_target(node: ast.Call) -> str | None:
    """The module named by ``importlib.import_module(<literal or f-string>)``: the literal, or an
    f-string's constant prefix (``f"clusterlake.io.contract.{t}"`` -> ``clusterlake.io.contract``)."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name != "import_module" or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value).rstrip(".")
    return None


def _imports_of(path: Path, root: Path = LIB) -> list[tuple[str, int]]:
    """Every module ``path`` imports, anywhere in the file, as ``(absolute name, line)``.

    ``from a.b import c`` is recorded as ``a.b.c`` (c may be a submodule: ``from clusterlake
    import algorithms`` must count as importing ``clusterlake.algorithms``)."""
    module = _module_name(path, root)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_package)
            found += [(base if alias.name == "*" else f"{base}.{alias.name}", node.lineno)
                      for alias in node.names]
        elif isinstance(node, ast.Call) and (target := _dynamic_target(node)):
            found.append((target, node.lineno))
    return found


@functools.lru_cache(maxsize=1)
def _all_imports() -> dict[str, tuple[Path, list[tuple[str, int]]]]:
    return {_module_name(p): (p, _imports_of(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(LIB.parent)}:{line}"


# --------------------------------------------------------------------------- the rules


def test_the_import_reader_sees_lazy_relative_and_dynamic_imports(tmp_path):
    """The rules below are only as good as the reader: it must see what a module really imports."""
    reader = {t for t, _ in _all_imports()["clusterlake.io.reader"][1]}
    assert "clusterlake.errors.InputDataError" in reader
    assert "pyspark.sql.functions" in reader, "function-level imports are missed"
    probe = tmp_path / "clusterlake" / "sub" / "mod.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f(x):\n    from ..algorithms import kmeans\n    from . import sibling\n"
                     "    import importlib\n    importlib.import_module(f'clusterlake.quality.{x}')\n")
    got = {t for t, _ in _imports_of(probe, root=tmp_path)}
    assert got == {"clusterlake.algorithms.kmeans", "clusterlake.sub.sibling", "importlib",
                   "clusterlake.quality"}


@pytest.mark.parametrize("layer, why, forbidden", FORBIDDEN,
                         ids=[f"{layer.split('.')[-1]}-{i}" for i, (layer, _, _) in enumerate(FORBIDDEN)])
def test_layer_imports_nothing_above_it(layer, why, forbidden):
    bad = [f"{_where(path, line)} {module} imports {target}"
           for module, (path, found) in _all_imports().items() if _within(module, layer)
           for target, line in found if any(_within(target, f) for f in forbidden)]
    assert not bad, f"{why}:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer, allowed, why", [
    ("clusterlake.kernels", KERNELS_MAY_IMPORT, "kernels are the bottom layer (numpy only)"),
    ("clusterlake.serving", SERVING_MAY_IMPORT,
     "serving assigns with the model artifact alone (no Spark drivers, no jobs)"),
])
def test_layer_imports_only_what_it_may(layer, allowed, why):
    bad = [f"{_where(path, line)} {module} imports {target}"
           for module, (path, found) in _all_imports().items() if _within(module, layer)
           for target, line in found
           if _within(target, "clusterlake") and not any(_within(target, ok) for ok in allowed)]
    assert not bad, f"{why}:\n" + "\n".join(bad)


_FRESH_IMPORT = """
import importlib, json, pathlib, sys
pkg = pathlib.Path(sys.argv[1])
names = sorted({p.stem for p in pkg.glob('*.py')})
for stem in names:
    importlib.import_module(sys.argv[2] if stem == '__init__' else sys.argv[2] + '.' + stem)
print(json.dumps({'names': names, 'modules': sorted(sys.modules)}))
"""


@pytest.mark.parametrize("package, expected", [
    ("kernels", ("distance", "stats", "metrics")),
    ("serving", ("assigner", "query", "http")),
])
def test_package_does_not_import_pyspark(package, expected):
    """No source mention of pyspark, and importing every module of the package in a fresh
    interpreter loads neither pyspark nor py4j, however indirectly (e.g. through io/). (Was
    test_kernels.py's kernels-only test, which re-imported the kernels in-process.)"""
    pkg_dir = PACKAGE / package
    sources = sorted(pkg_dir.glob("*.py"))
    for path in sources:
        assert "pyspark" not in path.read_text(encoding="utf-8").lower(), path
    name = f"clusterlake.{package}"
    res = subprocess.run([sys.executable, "-c", _FRESH_IMPORT, str(pkg_dir), name],
                         capture_output=True, text=True, cwd=str(LIB), timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(expected) <= set(report["names"])
    assert f"{name}.{expected[0]}" in report["modules"]
    offending = [m for m in report["modules"] if m.split(".")[0] in SPARK]
    assert not offending, offending


# --------------------------------------------------------------------------- function length


def _long_functions(path: Path) -> list[str]:
    """``file:line name (n lines)`` for every function or method over the limit; a nested
    function's lines count in its parent too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    n = child.end_lineno - child.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        out.append(f"{_where(path, child.lineno)} {name} ({n} lines)")
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def test_no_function_is_over_100_lines():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 30
    long = [entry for path in sources for entry in _long_functions(path)]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(long)
