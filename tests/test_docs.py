"""The documentation: the site builds with ``mkdocs build --strict`` (a warning — a broken link, an
unknown reference, a page missing from the navigation — is an error), the API reference covers every
public name of the packages it documents, and the README stays a front door (short, no dates, no
long lines outside tables and code)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# reference page -> the package whose ``__all__`` it must cover
REFERENCE = {
    "metaat": "metaat",
    "attacks": "metaat.attacks",
    "defenses": "metaat.defenses",
    "eval": "metaat.eval",
    "train": "metaat.train",
    "meta": "metaat.meta",
}


def _mkdocs() -> list[str] | None:
    """The command that runs mkdocs in this interpreter's environment, or None when it is missing."""
    try:
        importlib.import_module("mkdocs")
        importlib.import_module("mkdocstrings_handlers.python")
        importlib.import_module("material")
    except ImportError:
        return None
    return [sys.executable, "-m", "mkdocs"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built once, strictly, into a temporary folder."""
    command = _mkdocs()
    if command is None:
        pytest.skip("mkdocs, mkdocs-material or mkdocstrings-python is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run(
        [*command, "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin", "HOME": str(out)},
    )
    warnings = [ln for ln in (run.stdout + run.stderr).splitlines() if "WARNING" in ln or "ERROR" in ln]
    assert run.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(warnings or [run.stderr[-3000:]])
    return out


def test_the_site_builds_strictly_with_every_page(site: Path) -> None:
    pages = {p.relative_to(ROOT / "docs").with_suffix("") for p in (ROOT / "docs").rglob("*.md")}
    for page in pages:
        html = site / page / "index.html" if page.name != "index" else site / page.parent / "index.html"
        assert html.is_file(), f"docs/{page}.md was not built"


def _anchors(html: str) -> set[str]:
    return set(re.findall(r'id="([\w.]+)"', html))


@pytest.mark.parametrize("page", sorted(REFERENCE))
def test_the_api_reference_covers_every_public_name(site: Path, page: str) -> None:
    """Each name in the package's ``__all__`` has an entry on its reference page: under the package's
    name, under the name of the object it re-exports, or (for the lazy shortcuts of ``metaat``) as a
    link to the page or entry that documents it."""
    package = importlib.import_module(REFERENCE[page])
    html = (site / "reference" / page / "index.html").read_text(encoding="utf-8")
    anchors = _anchors(html)
    missing = []
    for name in package.__all__:
        obj = getattr(package, name)
        candidates = {f"{package.__name__}.{name}"}
        if getattr(obj, "__module__", None) and getattr(obj, "__qualname__", None):
            candidates.add(f"{obj.__module__}.{obj.__qualname__}")
        if page == "metaat" and f"<code>metaat.{name}</code>" in html:
            continue  # a shortcut row that links to the entry documenting it
        if not candidates & anchors:
            missing.append(name)
    assert not missing, f"reference/{page}.md documents none of {missing}"


def test_the_readme_is_a_front_door() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text) <= 15_000, f"README.md has {len(text):,} characters (at most 15,000)"
    dates = re.findall(r"20\d\d-\d\d-\d\d", text)
    assert not dates, f"README.md carries dates {dates}: the history belongs in CHANGELOG.md"
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    long = [ln for ln in prose.splitlines() if len(ln) > 120 and not ln.lstrip().startswith("|")]
    assert not long, f"README.md lines over 120 characters outside tables and code: {long[:3]}"
    for link in re.findall(r"\]\(([^)#]+)", text):
        if not link.startswith(("http://", "https://")):
            assert (ROOT / link).exists(), f"README.md links to {link}, which does not exist"


def test_the_changelog_keeps_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog") and "## [Unreleased]" in text
    versions = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d\d-\d\d))?", text, flags=re.M)
    assert versions and all(date for name, date in versions if name != "Unreleased")
    for section in re.findall(r"^### (\w+)", text, flags=re.M):
        assert section in {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, section


def test_make_docs_builds_strictly() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    target = re.search(r"^docs:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert target and "mkdocs build --strict" in target.group(1)


def test_the_config_files_the_docs_name_exist() -> None:
    """A preset or config the README or the docs tell a reader to use is in the repository."""
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    named = {m for page in pages for m in re.findall(r"configs/[\w./-]+\.yaml", page.read_text(encoding="utf-8"))}
    assert named, "the docs name no config file"
    missing = sorted(path for path in named if not (ROOT / path).is_file())
    assert not missing, f"the docs name config files that do not exist: {missing}"


def test_getting_started_shows_the_readme_python_that_a_test_runs() -> None:
    """docs/getting-started.md repeats the README's Python quickstart, which tests/test_readme_python.py
    runs; the two cannot drift apart."""

    def first_python(path: Path) -> str:
        return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)[0]

    assert first_python(ROOT / "docs" / "getting-started.md") == first_python(README)


def _resolves(dotted: str) -> bool:
    """Whether ``metaat.a.b`` names a module or an attribute reachable from one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_the_names_the_guides_mention_exist() -> None:
    """Every ``metaat.…`` name in backticks on the README and the guide pages (the studies quote
    history) is a module or an object a reader can import."""
    pages = [README, *(p for p in sorted((ROOT / "docs").rglob("*.md")) if "studies" not in p.parts)]
    named = {m for page in pages for m in re.findall(r"`(metaat(?:\.\w+)+)", page.read_text(encoding="utf-8"))}
    assert len(named) > 5, named
    missing = sorted(name for name in named if not _resolves(name))
    assert not missing, f"the docs name objects that do not exist: {missing}"
