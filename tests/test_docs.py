"""The API reference lists every public name, and each has a complete numpydoc docstring."""

import ast
import importlib
import inspect
import pkgutil
import re
import textwrap
from pathlib import Path

import pytest
from sklearn.base import BaseEstimator

import skvae

API_RST = Path(__file__).parents[1] / "docs" / "api.rst"


def _listed_names():
    """``module.name`` for every entry of the autosummary tables in docs/api.rst."""
    names, module = [], None
    for line in API_RST.read_text().splitlines():
        if match := re.match(r"\.\. currentmodule:: (\S+)", line):
            module = match.group(1)
        elif re.match(r"   [A-Za-z_][\w.]*$", line):
            names.append(f"{module}.{line.strip()}")
    return names


def _public_objects():
    """Classes and functions defined in skvae's public modules."""
    for info in pkgutil.walk_packages(skvae.__path__, prefix="skvae."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            defined_here = getattr(obj, "__module__", None) == module.__name__
            if not name.startswith("_") and defined_here and (inspect.isclass(obj) or inspect.isfunction(obj)):
                yield obj


def _resolve(dotted):
    """The object named ``package.module.name`` or ``package.name``."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for part in parts[split:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(dotted)


def _sections(obj):
    doc = inspect.cleandoc(obj.__doc__ or "")
    return {match.group(1): match.end() for match in re.finditer(r"^(\w[\w ]*)\n-{3,}$", doc, re.MULTILINE)}, doc


def _returns_a_value(function):
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return any(isinstance(node, ast.Return) and node.value is not None for node in ast.walk(tree))


def test_every_public_class_and_function_is_in_the_api_reference():
    listed = {id(_resolve(name)) for name in _listed_names()}
    missing = [f"{obj.__module__}.{obj.__qualname__}" for obj in _public_objects() if id(obj) not in listed]
    assert not missing, f"add these to docs/api.rst: {missing}"


@pytest.mark.parametrize("name", _listed_names())
def test_api_docstring_has_the_numpydoc_sections(name):
    obj = _resolve(name)
    sections, doc = _sections(obj)
    assert "Examples" in sections and ">>>" in doc[sections["Examples"]:], f"{name}: no runnable Examples section"
    try:
        parameters = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
    except ValueError:  # a warning class: a builtin's constructor has no signature to document
        parameters = []
    if parameters:
        assert "Parameters" in sections, f"{name}: no Parameters section for {parameters}"
    if inspect.isfunction(obj) and _returns_a_value(obj):
        assert {"Returns", "Yields"} & set(sections), f"{name}: no Returns section"
    if inspect.isclass(obj) and issubclass(obj, BaseEstimator):
        assert "Attributes" in sections, f"{name}: an estimator documents its fitted attributes"


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # one-epoch fits: nothing to encode
def test_the_docstrings_claims_that_can_drift_hold():
    """What fit's and partial_fit's docstrings say about sparse input and the shaping parameters is what the code does."""
    import scipy.sparse as sp

    from skvae import BetaVSCEmbedder
    from skvae.base import BaseEmbedder

    fit_doc = " ".join(BaseEmbedder.fit.__doc__.split())
    assert "Sparse input stays sparse" in fit_doc
    X = sp.random(40, 30, density=0.2, format="csr", random_state=0)
    assert BetaVSCEmbedder(max_epochs=1, random_state=0).fit(X).algorithm_ == "sparse"  # never densified
    assert BetaVSCEmbedder(max_epochs=1, random_state=0, algorithm="dense").fit(X).algorithm_ == "dense"
    # every parameter that shapes the network is named where partial_fit says which cannot change
    partial_doc = " ".join(BaseEmbedder.partial_fit.__doc__.split())
    shaping = set(BetaVSCEmbedder()._architecture()) - {"prior_activity", "spike_sharpness"}  # "the prior"
    assert all(f"``{name}``" in partial_doc for name in shaping), shaping


def test_one_install_line_everywhere():
    """The README and the docs give the same install line, and it installs only (the study is a command of its own)."""
    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.rst"))]
    lines = {line.strip() for page in pages for line in page.read_text().splitlines() if "python3 -m venv" in line}
    assert len(lines) == 1, lines
    line = lines.pop()
    assert "download.pytorch.org/whl/cpu" in line and line.endswith('pip install -e ".[test]"')
    assert "skvae study" not in line and "pytest" not in line
