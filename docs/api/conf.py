"""Sphinx configuration of cdnn's API reference, generated from the docstrings of the installed
package. Build: pip install '.[docs]', then sphinx-build -W -b html docs/api docs/api/_build
(from the repository root, against an installed cdnn: PYTHONSAFEPATH=1 keeps "python -m" from
importing the source tree, which has no compiled kernels).
"""
import cdnn

project = "cdnn"
release = version = cdnn.__version__
copyright = "the cdnn authors"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]

# the docstrings write `name` for code, as Markdown does
default_role = "literal"
autodoc_default_options = {
    "members": True, "show-inheritance": True,
    # scikit-learn's metadata-routing setters: documented by scikit-learn, not by cdnn
    "exclude-members": "set_fit_request, set_partial_fit_request, set_score_request",
}
autodoc_member_order = "bysource"
# the signatures carry the types; repeating them in the text would only add noise
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = True

# docs/EXPERIMENTS.md links each experiment's own page (docs/experiments/*.md), which are not
# pages of this reference
suppress_warnings = ["myst.xref_missing"]
html_theme = "alabaster"
