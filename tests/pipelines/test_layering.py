"""The library never imports the applications, and the pipelines have no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "otcl"
LIBRARY = [*sorted((SRC / "ot").rglob("*.py")), *sorted((SRC / "losses").rglob("*.py")),
           SRC / "diagnostics.py", SRC / "__init__.py"]  # fmt: skip


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str | None = None) -> set[str]:
    """Absolute names of the otcl modules ``path`` (module ``module``) imports."""
    pkg = (module or _module(path)).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return {m for m in out if m == "otcl" or m.startswith("otcl.")}


def test_library_files_import_nothing_from_the_pipelines():
    assert len(LIBRARY) > 10
    bad = {
        str(p.relative_to(SRC)): sorted(m for m in _imports(p) if m.startswith("otcl.pipelines"))
        for p in LIBRARY
    }
    assert not {k: v for k, v in bad.items() if v}


def test_importing_the_library_loads_no_pipeline_module():
    code = (
        "import sys, otcl, otcl.losses, otcl.ot, otcl.diagnostics\n"
        "print(sorted(m for m in sys.modules if m.startswith('otcl.pipelines') or m == 'otcl.cli'))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_the_import_checker_sees_pipeline_imports(tmp_path):
    """The AST check above notices relative and absolute imports of a pipeline module."""
    fake = tmp_path / "fake.py"
    fake.write_text("from ..pipelines.run import EpochTrainer\nimport otcl.pipelines.ssl\n")
    got = _imports(fake, module="otcl.losses.fake")
    assert {"otcl.pipelines.run", "otcl.pipelines.run.EpochTrainer", "otcl.pipelines.ssl"} <= got


def test_pipeline_modules_have_no_import_cycle():
    files = sorted((SRC / "pipelines").rglob("*.py")) + [SRC / "cli.py"]
    mods = {_module(p): p for p in files}
    graph = {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, m, n]))
            if n not in state:
                visit(n, [*stack, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert "otcl.pipelines.ssl.trainer" in graph["otcl.pipelines.ssl.evaluate"]
