"""The repository stands alone: every Markdown document its sources and docs cite
exists in the repository, and every section they cite of the method notes is a
heading of ``docs/method.md``.

Checked files: ``*.py`` and ``*.md`` under ``src/``, ``experiments/``,
``benchmarks/``, ``tests/`` and ``docs/``, and ``README.md``. A reference is any
token ending in ``.md``; it resolves relative to the repository root or to the
citing file's folder, and must land on a file inside the repository. Names the
code itself writes (string literals such as the run folder's summary file, found
by parsing the Python sources, docstrings excluded) are artefacts, not
documents, and are allowed. A section reference is ``§`` followed by a dotted
number, or a range such as ``§3.1–3.2``; only the method notes are cited that
way, so each number must be the number of one of its headings.
"""

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHOD = ROOT / "docs" / "method.md"
SCANNED_DIRS = ("src", "experiments", "benchmarks", "tests", "docs")

# A path-like token ending in ".md" (not part of a longer word or path).
_DOC_REF = re.compile(r"(?<![\w./-])([\w./-]*\w\.md)(?![\w])")
# "§4.2", "§3.1–3.2", "§3.1-3.2": the section number and an optional range end.
_SECTION_REF = re.compile(r"§\s*(\d+(?:\.\d+)*)(?:\s*[–-]\s*(\d+(?:\.\d+)*))?")
# "## 4. Title", "### 4.2 Title": the numbered headings of the method notes.
_HEADING = re.compile(r"^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)


def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for d in SCANNED_DIRS:
        base = ROOT / d
        if base.is_dir():
            files += sorted(p for p in base.rglob("*") if p.suffix in (".py", ".md"))
    # This file is left out: its examples cite missing documents on purpose.
    here = Path(__file__).resolve()
    return [
        p
        for p in files
        if p.is_file() and "__pycache__" not in p.parts and p.resolve() != here
    ]


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        ):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                ids.add(id(body[0].value))
    return ids


@functools.cache
def written_artefacts() -> set[str]:
    """``.md`` names that appear as string values in code (not docstrings) under
    ``src/`` and ``experiments/``: files the code writes or reads, e.g. a run
    folder's ``summary`` page."""
    names = set()
    for d in ("src", "experiments"):
        for path in sorted((ROOT / d).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docs = _docstring_nodes(tree)
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in docs
                ):
                    names.update(m.group(1) for m in _DOC_REF.finditer(node.value))
    return {Path(n).name for n in names}


def method_sections(text: str) -> set[str]:
    """The numbers of the numbered headings of the method notes."""
    return set(_HEADING.findall(text))


def section_refs(text: str) -> list[str]:
    """Every section number cited with ``§`` (both ends of a range)."""
    out = []
    for m in _SECTION_REF.finditer(text):
        out += [g for g in m.groups() if g]
    return out


def doc_refs(text: str) -> list[str]:
    """Every ``.md`` path-like token of ``text``."""
    return [m.group(1) for m in _DOC_REF.finditer(text)]


def _resolves(ref: str, citing: Path) -> bool:
    for base in (ROOT, citing.parent):
        target = (base / ref).resolve()
        if target.is_relative_to(ROOT) and target.is_file():
            return True
    return False


def test_parsers_find_what_they_should():
    """The checks below can fail: the parsers see references and headings."""
    text = "see docs/method.md §4.2 and §3.1–3.2 (style.md, ../x/landscape.md)"
    assert doc_refs(text) == ["docs/method.md", "style.md", "../x/landscape.md"]
    assert section_refs(text) == ["4.2", "3.1", "3.2"]
    assert doc_refs("results/*.md and summary.md.") == ["summary.md"]
    headings = "# Title\n## 1. One\n### 1.2 Two\n#### 10.3 Deep\n## Unnumbered\n"
    assert method_sections(headings) == {"1", "1.2", "10.3"}
    assert not _resolves("../shared/docs/method.md", ROOT / "src" / "x.py")
    assert _resolves("docs/method.md", ROOT / "src" / "uswim_jax" / "x.py")
    assert _resolves("method.md", ROOT / "docs" / "README.md")
    assert not _resolves("method.md", ROOT / "src" / "uswim_jax" / "x.py")


def test_the_docs_exist_and_are_linked():
    for name in ("README.md", "method.md", "architecture.md", "device.md"):
        assert (ROOT / "docs" / name).is_file(), name
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for name in ("method.md", "architecture.md", "device.md"):
        assert f"]({name})" in index, f"docs/README.md does not link {name}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/README.md)" in readme, "README.md does not link docs/README.md"


def test_method_sections_are_numbered_in_order():
    numbers = _HEADING.findall(METHOD.read_text(encoding="utf-8"))
    assert numbers, "docs/method.md has no numbered sections"
    assert len(numbers) == len(set(numbers)), "duplicate section numbers"
    as_tuples = [tuple(int(p) for p in n.split(".")) for n in numbers]
    assert as_tuples == sorted(as_tuples), "sections out of order"


def test_every_cited_document_exists():
    artefacts = written_artefacts()
    problems = []
    for path in _scanned_files():
        refs = doc_refs(path.read_text(encoding="utf-8"))
        missing = sorted(
            {
                r
                for r in refs
                if not _resolves(r, path) and Path(r).name not in artefacts
            }
        )
        if missing:
            problems.append(f"{path.relative_to(ROOT)}: {missing}")
    assert not problems, "documents cited but not in the repository:\n" + "\n".join(
        problems
    )


def test_every_cited_section_exists():
    sections = method_sections(METHOD.read_text(encoding="utf-8"))
    problems = []
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8")
        refs = section_refs(text)
        if not refs:
            continue
        rel = path.relative_to(ROOT)
        # Outside docs/ the citation must name the file from the root.
        named = "docs/method.md" in text or path.parent == METHOD.parent
        if not named:
            problems.append(f"{rel}: cites sections with § but not docs/method.md")
        bad = sorted(set(refs) - sections)
        if bad:
            problems.append(f"{rel}: sections {bad} are not in docs/method.md")
    assert not problems, "\n".join(problems)
