"""The ``>>>`` examples in the docstrings run and print what they show: every module of the ``metaat``
package is imported and its doctests are executed (the API reference on the docs site renders these
same docstrings, so an example that drifts from the code fails here, not in a reader's hands)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import metaat


def module_names() -> list[str]:
    """Every module of the installed ``metaat`` package, sub-packages included (``__main__`` modules
    run the command line when imported: they hold no examples)."""
    names = ["metaat"]
    for info in pkgutil.walk_packages(metaat.__path__, prefix="metaat."):
        if not info.name.endswith(".__main__"):
            names.append(info.name)
    return sorted(names)


def examples_in(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(module, name) if t.examples]


@pytest.mark.parametrize("name", [n for n in module_names() if examples_in(n)])
def test_the_docstring_examples_run(name: str) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in examples_in(name):
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, "".join(report)


def test_the_package_documents_itself_with_examples() -> None:
    """Enough modules carry examples that the run above is not empty by accident."""
    with_examples = [n for n in module_names() if examples_in(n)]
    assert len(with_examples) >= 10, with_examples
