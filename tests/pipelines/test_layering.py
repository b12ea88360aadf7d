"""Layers: the library never imports the applications, the pipelines have no import cycle, no
pipeline imports another, and the shared sources import no pipeline."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "otcl"
LIBRARY = [*sorted((SRC / "ot").rglob("*.py")), *sorted((SRC / "losses").rglob("*.py")),
           SRC / "diagnostics.py", SRC / "__init__.py"]  # fmt: skip


def _module(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
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


def test_no_module_imports_itself_back():
    """No import cycle anywhere in the package, type-only imports (``if TYPE_CHECKING:``) and
    imports inside functions included; a package's face (``__init__``) is left out, since it
    only re-exports what its modules define."""
    files = [p for p in sorted(SRC.rglob("*.py")) if p.name != "__init__.py"]
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


PIPELINES = ("ssl", "recsys", "multimodal", "domains")
#: what the shared sources sit below: the pipelines and the layers that drive them
ABOVE_SOURCES = (
    *PIPELINES,
    "imaging",
    "compare",
    "compare_runs",
    "compare_workers",
    "comparison",
    "commands",
    "verbs",
    "runs",
)


def _package_of(module: str) -> str | None:
    """``ssl`` for ``otcl.pipelines.ssl.trainer``; None outside ``otcl.pipelines.<name>``."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["otcl", "pipelines"] else None


def _upward_imports(
    files: dict[str, list[Path]], forbidden: tuple[str, ...], root: Path = SRC
) -> dict[str, list[str]]:
    """file -> the modules of ``otcl.pipelines.<forbidden>`` it imports (its own package is
    allowed); ``root`` is the ``otcl`` folder the files are in."""
    out = {}
    for pkg, paths in files.items():
        for p in paths:
            mods = _imports(p, module=_module(p, root))
            bad = sorted(m for m in mods if _package_of(m) in forbidden and _package_of(m) != pkg)
            if bad:
                out[str(p.relative_to(root))] = bad
    return out


def _files_of(pkg: str) -> list[Path]:
    return sorted((SRC / "pipelines" / pkg).rglob("*.py"))


def test_no_pipeline_imports_another_pipeline():
    files = {pkg: _files_of(pkg) for pkg in PIPELINES}
    assert all(len(v) >= 5 for v in files.values())
    assert not _upward_imports(files, PIPELINES)


def test_sources_import_no_pipeline():
    files = {"sources": _files_of("sources")}
    assert len(files["sources"]) >= 8
    assert not _upward_imports(files, ABOVE_SOURCES)


def test_the_pipeline_check_sees_a_cross_import(tmp_path):
    """The checks above flag a pipeline that imports another one, relatively or absolutely, and
    sources that import a pipeline."""
    root = tmp_path / "otcl"
    mm = root / "pipelines" / "multimodal"
    mm.mkdir(parents=True)
    (mm / "data.py").write_text("from ..ssl.data import load_dataset\n")
    (mm / "models.py").write_text("import otcl.pipelines.recsys.models\nfrom ..sources import x\n")
    src = root / "pipelines" / "sources"
    src.mkdir()
    (src / "text.py").write_text("from ..recsys import text\nfrom .._files import atomic\n")
    got = _upward_imports({"multimodal": sorted(mm.glob("*.py"))}, PIPELINES, root)
    up = _upward_imports({"sources": [src / "text.py"]}, ABOVE_SOURCES, root)
    assert set(got) == {"pipelines/multimodal/data.py", "pipelines/multimodal/models.py"}
    assert "otcl.pipelines.ssl.data" in got["pipelines/multimodal/data.py"]
    assert got["pipelines/multimodal/models.py"] == ["otcl.pipelines.recsys.models"]
    assert up == {
        "pipelines/sources/text.py": ["otcl.pipelines.recsys", "otcl.pipelines.recsys.text"]
    }
