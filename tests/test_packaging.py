"""How cdnn meets a new user: importing it from a source tree without compiled kernels says in
one line what to do (issue 17: it was a confusing "circular import"), and every public name has
the docstring that the API reference (docs/api) is generated from."""
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cdnn

PUBLIC_MODULES = ["cdnn", "cdnn.datasets", "cdnn.schedules", "cdnn.sklearn"]

# An editable install's import hook would supply the kernels from its own tree; a user's plain
# source tree has no such hook, so the child drops it.
IMPORT_WITHOUT_EDITABLE_HOOKS = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
    "if 'editable' not in getattr(f, '__module__', '') + repr(f)]; import cdnn")


def source_tree(folder: Path, version: str | None = None) -> Path:
    """A copy of cdnn's Python source in folder/cdnn, without compiled kernels."""
    shutil.copytree(Path(cdnn.__file__).parent, folder / "cdnn",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    if version is not None:
        (folder / "cdnn" / "_version.py").write_text(f"__version__ = {version!r}\n")
    return folder


def test_a_source_tree_without_kernels_says_what_to_do(tmp_path):
    source_tree(tmp_path, version="0.0.0+not-installed")    # no installed kernels of its version
    # a user in the source tree: the current folder first on sys.path (conftest turns it off)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    child = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_EDITABLE_HOOKS], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, env=env)
    assert child.returncode != 0
    last = child.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: cdnn's compiled kernels are missing"), child.stderr
    assert "pip install -e ." in last and "circular" not in child.stderr


def test_a_script_in_the_checkout_runs_on_the_installed_kernels(tmp_path):
    """After the quick start (pip install .), a script saved in the checkout and run there
    imports the checkout's cdnn, which has no kernels: the installed ones of the same version
    serve it (issue 23 #19: it said the kernels were missing)."""
    site = tmp_path / "site"        # an installed cdnn: the package and its metadata
    shutil.copytree(Path(cdnn.__file__).parent, site / "cdnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (site / f"cdnn-{cdnn.__version__}.dist-info").mkdir()
    (site / f"cdnn-{cdnn.__version__}.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: cdnn\nVersion: {cdnn.__version__}\n")
    checkout = source_tree(tmp_path / "checkout")
    (checkout / "try.py").write_text(
        "import numpy as np, cdnn\n"
        "X = np.random.default_rng(0).normal(size=(200, 8)); y = (X[:, 0] > 0).astype(int)\n"
        "net = cdnn.MLP([8, 16, 2], seed=0)\n"
        "cdnn.Trainer(net, cdnn.Adam(0.01), batch_size=32).fit(X, y, epochs=20, verbose=0)\n"
        "print(cdnn.__file__.startswith(%r), net.evaluate(X, y)['accuracy'] > 0.9)\n"
        % str(checkout))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env["PYTHONPATH"] = str(site)
    code = ("import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' "
            "not in getattr(f, '__module__', '') + repr(f)]; sys.path.insert(0, '.'); "
            "runpy.run_path('try.py', run_name='__main__')")
    child = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True,
                           text=True, timeout=120, env=env)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["True", "True"]


def public_names(module):
    """(qualified name, object) for each name in __all__, and each class's public methods and
    properties (an inherited docstring counts: an override documents itself by its base)."""
    for name in module.__all__:
        obj = getattr(module, name)
        yield f"{module.__name__}.{name}", obj
        if inspect.isclass(obj):
            for attr, value in inspect.getmembers(obj):
                if not attr.startswith("_") and (callable(value) or isinstance(value, property)):
                    yield f"{module.__name__}.{name}.{attr}", value


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module_name):
    if module_name == "cdnn.sklearn":
        pytest.importorskip("sklearn")
    module = importlib.import_module(module_name)
    # a class must have its own docstring (getdoc would fall back on its base class's)
    undocumented = [name for name, obj in public_names(module)
                    if not ((vars(obj).get("__doc__") if inspect.isclass(obj)
                             else inspect.getdoc(obj)) or "").strip()]
    assert not undocumented, f"public names without a docstring: {undocumented}"


def test_the_api_reference_lists_every_public_name():
    reference = (Path(__file__).resolve().parents[1] / "docs" / "api" / "reference.rst").read_text()
    missing = [name for name in cdnn.__all__ if f"cdnn.{name}\n" not in reference]
    assert not missing, f"add these to docs/api/reference.rst: {missing}"


def _slug(heading: str) -> str:
    """The anchor that myst (and GitHub) give a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_user_guides_links_lead_somewhere():
    """Issue 23 #18: the guide had dead links to anchors outside the text it included, and to
    docs/DISTRIBUTED.md, which was no page of the built docs. The guide (docs/GUIDE.md, a page of
    the built docs at docs/api/docs/GUIDE.md, so that its relative links resolve alike on GitHub
    and in Sphinx): every #anchor is one of its headings, every link to a Markdown file a file
    beside it and a page at that path in docs/api; the README's links to the guide's sections
    name its headings."""
    root = Path(__file__).resolve().parents[1]
    guide = (root / "docs" / "GUIDE.md").read_text()
    assert "../../GUIDE.md" in (root / "docs" / "api" / "docs" / "GUIDE.md").read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+ (.*)$", guide, re.M)}
    links = re.findall(r"\]\(([^)\s]+)\)", guide)
    dead = [link for link in links if link.startswith("#") and link[1:] not in anchors]
    pages = [link.split("#")[0] for link in links if ".md" in link and "://" not in link]
    dead += [link for link in pages if not (root / "docs" / link).is_file()
             or not (root / "docs" / "api" / "docs" / link).resolve().is_file()]
    readme = (root / "README.md").read_text()
    dead += [f"README: #{a}" for a in re.findall(r"\(docs/GUIDE\.md#([^)]+)\)", readme)
             if a not in anchors]
    assert "DISTRIBUTED.md" in pages and not dead, dead


def test_the_reference_shows_functions_as_functions():
    """Issue 23 #18: Sequential and Dense (functions) were shown as classes with an empty
    "Bases:", and MLP's internal evaluate_batch was listed."""
    reference = (Path(__file__).resolve().parents[1] / "docs" / "api" / "reference.rst").read_text()
    for name in ("Sequential", "Dense"):
        assert inspect.isfunction(getattr(cdnn, name))
        assert f".. autofunction:: cdnn.{name}\n" in reference
    assert ":exclude-members: evaluate_batch" in reference
    assert all(f"{name}:" in cdnn.MLP.__doc__ for name in ("params", "weights", "biases"))
