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
