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
    """``tests/.../test_x.py::test_name`` citations in the docs name real tests."""
    missing = []
    for path, text in _texts():
        for file, name in re.findall(r"(tests/[\w/]*test_\w+\.py)::(\w+)", text):
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


KNOWN_UNANNOTATED: set[str] = set()


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


# -- defaults: code == docs/losses.md == the official code (shared/research notes) -----------
# Official defaults (research notes gca.md §4, iot.md §3, hnot.md §2-4, dmm.md §3): the paper
# code's values, or otcl's documented choice where the official code has none.
OFFICIAL = {
    "ot": {"temperature": 0.5, "constraint": "rows", "divergence": "ce", "layout": "simclr"},
    "infonce": {"temperature": 0.5, "layout": "simclr", "self_pair": "mask"},
    "iot": {"temperature": 0.5, "iters": 10, "constraint": "balanced"},
    "iot-uni": {"temperature": 0.5, "iters": 10, "lam_uni": 0.2, "detach_mean": False},
    "gca-ince": {"temperature": 0.5, "iters": 10, "constraint": "balanced"},
    "gca-rince": {"temperature": 0.5, "iters": 10, "q": 0.6, "lam": 0.01, "marginals": "unit"},
    "gca-uot": {
        "temperature": 0.5,
        "iters": 10,
        "rho": 0.2,
        "q": 0.6,
        "lam": 0.01,
        "w_kl": 1.0,
        "w_rince": 0.02,
        "marginals": "uniform",
    },
    "rince": {"temperature": 0.5, "q": 0.6, "lam": 0.01, "constraint": "rows"},
    "dcl": {"temperature": 0.5, "tau_plus": 0.1, "layout": "simclr"},
    "hcl": {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.1},
    "ot-hard": {
        "temperature": 0.5,
        "eps": 0.7,
        "cost": "sqeuclidean",
        "kappa": 1.0,
        "tau_plus": 0.0,
        "coupling_grad": "none",
    },
    "dmm": {
        "margin": 0.2,
        "lam_range": (0.5, 1.0),
        "warmup": 30.0,
        "weight": 1.0,
        "partner": "reverse",
        "pair_loss": "hinge",
        "both_views": False,
        "repel_close_positives": False,
        "legacy_cumulative_margin": False,
    },
}


@pytest.mark.parametrize("name", otcl.losses.available())
def test_defaults_match_the_official_code(name):
    loss = otcl.losses.build(name)
    for key, value in OFFICIAL[name].items():
        assert getattr(loss, key) == value, (name, key, getattr(loss, key), value)
    if name == "dmm":
        assert type(loss.base).registry_name == "infonce"


def _value(text: str):
    text = text.strip().strip("`").strip('"')
    if text in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[text]
    if text.startswith("("):
        return tuple(float(v) for v in text.strip("()").split(","))
    try:
        return float(text)
    except ValueError:
        return text


def _doc_defaults():
    """(name, key, value) triples from docs/losses.md: the loss table's defaults column and the
    per-loss parameter tables of ot-hard and dmm."""
    text = (ROOT / "docs" / "losses.md").read_text()
    out = []
    for name, cell in re.findall(r"^\| `([\w-]+)` \|.*\| ([^|]*) \|$", text, flags=re.M):
        if name not in otcl.losses.available():
            continue
        for item in re.split(r",\s*(?![^()]*\))", cell):
            item = item.strip()
            if m := re.fullmatch(r"(\d+) it", item):
                out.append((name, "iters", float(m.group(1))))
            elif m := re.fullmatch(r"(\w+) (.+)", item):
                key = m.group(1)
                if key == "eps" and name != "ot-hard":
                    key = "temperature"
                out.append((name, key, _value(m.group(2))))
    for name, header in (("ot-hard", "### `ot-hard`"), ("dmm", "### `dmm`")):
        section = text.split(header, 1)[1].split("\n### ", 1)[0]
        for key, default in re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section, flags=re.M):
            out.append((name, key, _value(default)))
    return out


DOC_DEFAULTS = _doc_defaults()


def test_docs_tables_were_parsed():
    names = {n for n, _, _ in DOC_DEFAULTS}
    assert names == set(otcl.losses.available()), names


@pytest.mark.parametrize("name,key,value", DOC_DEFAULTS, ids=lambda x: str(x))
def test_docs_defaults_match_the_code(name, key, value):
    loss = otcl.losses.build(name)
    got = getattr(loss, key)
    if isinstance(value, float) and got is not None and not isinstance(got, str):
        assert float(got) == pytest.approx(value), (name, key, got, value)
    else:
        assert got == value, (name, key, got, value)


def test_losses_doc_python_examples_run():
    """The self-contained Python blocks of docs/losses.md (those that import what they use, e.g.
    the domain target for your own domains) run."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "losses.md").read_text(), re.S)
    blocks = [b for b in blocks if b.startswith("import ")]
    assert blocks
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, "docs/losses.md", "exec"), namespace)
    assert namespace["value"].ndim == 0 and bool(namespace["value"].isfinite())
