"""The documentation points at things that exist: files, test names, and loss names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import otcl

ROOT = Path(__file__).resolve().parents[1]
TEXT_FILES = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "src").rglob("*.py")]
)


def _texts():
    return [(p, p.read_text()) for p in TEXT_FILES]


def test_referenced_repository_paths_exist():
    """Every ``docs/...``, ``src/...``, ``tests/...`` or ``scripts/...`` path mentioned exists."""
    missing = []
    pattern = re.compile(r"(?<![\w/.-])((?:docs|src|tests|scripts)/[\w./-]*\w)")
    for path, text in _texts():
        for ref in pattern.findall(text):
            if not (ROOT / ref).exists():
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert not missing, "dangling references:\n" + "\n".join(missing)


def test_markdown_links_resolve():
    missing = []
    for path, text in _texts():
        if path.suffix != ".md":
            continue
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if "://" in target:
                continue
            if not (path.parent / target).exists():
                missing.append(f"{path.relative_to(ROOT)}: {target}")
    assert not missing, "dangling links:\n" + "\n".join(missing)


def test_cited_tests_exist():
    """``tests/test_x.py::test_name`` citations in the docs name real tests."""
    missing = []
    for path, text in _texts():
        for file, name in re.findall(r"(tests/test_\w+\.py)::(\w+)", text):
            source = (ROOT / file).read_text() if (ROOT / file).exists() else ""
            if f"def {name}(" not in source:
                missing.append(f"{path.relative_to(ROOT)}: {file}::{name}")
    assert not missing, "cited tests not found:\n" + "\n".join(missing)


@pytest.mark.parametrize("name", otcl.losses.available())
def test_every_loss_is_in_the_docs_table_and_readme(name):
    losses_md = (ROOT / "docs" / "losses.md").read_text()
    assert re.search(rf"^\| `{re.escape(name)}` \|", losses_md, flags=re.M), name
    assert f"`{name}`" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", otcl.losses.available())
def test_every_loss_docstring_states_its_equation_and_cites_its_paper(name):
    doc = otcl.losses.get(name).__doc__ or ""
    assert ".. math::" in doc or ":math:" in doc, f"{name}: no equation in the docstring"
    assert re.search(r"\b(19|20)\d\d\b", doc), f"{name}: no year of the cited paper"
    assert re.search(r"et al\.|, [A-Z]\w+, [A-Z]\w+", doc), f"{name}: no authors cited"


def _public_callables():
    import inspect

    import otcl.diagnostics
    import otcl.losses
    import otcl.ot

    seen = set()
    for mod in (otcl.losses, otcl.ot, otcl.diagnostics):
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr)
            if inspect.isfunction(obj):
                yield f"{mod.__name__}.{attr}", obj
            elif inspect.isclass(obj):
                for meth_name, meth in vars(obj).items():
                    if not inspect.isfunction(meth) or id(meth) in seen:
                        continue
                    if meth_name.startswith("_") and meth_name != "__init__":
                        continue
                    seen.add(id(meth))
                    yield f"{mod.__name__}.{attr}.{meth_name}", meth


# src/otcl/ot/sinkhorn.py is being reworked on the solver branch: its one gap is left to it
KNOWN_UNANNOTATED = {"otcl.ot.solve(kwargs)"}


def test_public_api_is_type_annotated():
    import inspect

    missing = []
    for qual, fn in _public_callables():
        sig = inspect.signature(fn)
        for p in sig.parameters.values():
            if p.name in ("self", "cls", "ctx"):
                continue
            if p.annotation is inspect.Parameter.empty:
                missing.append(f"{qual}({p.name})")
        if sig.return_annotation is inspect.Signature.empty:
            missing.append(f"{qual} -> ?")
    missing = [m for m in missing if m not in KNOWN_UNANNOTATED]
    assert not missing, "unannotated public API:\n" + "\n".join(missing)
