# Configuration file for the Sphinx documentation builder

import sys

from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))

import contmix

## Project

project = "contmix"
version = release = contmix.__version__
copyright = "2026, the contmix developers"

## Extensions

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

autodoc_default_options = {"member-order": "bysource"}
autodoc_inherit_docstrings = False
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"

# The API pages (docs/api/) are generated at each build from the docstrings of every
# public module of contmix, found by walking the package: see docs/api.rst.
autosummary_generate = True
autosummary_ignore_module_all = False
autosummary_imported_members = False

# Docstrings follow zuko's conventions: Google-style "Arguments:", "Returns:",
# "Example:" and "References:" sections, plus "Wikipedia:" links.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Shapes", "params_style"), "Wikipedia"]

myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# No intersphinx (the build runs offline): references to torch and zuko stay plain text.
nitpicky = False

## Settings

add_function_parentheses = False
default_role = "literal"
exclude_patterns = ["_build", "_templates", "README.md", "**/.ipynb_checkpoints"]
html_css_files = ["custom.css"]
html_static_path = ["_static"]
html_theme = "furo"
html_title = f"{project} {version}"
html_show_sourcelink = False
pygments_style = "sphinx"
pygments_dark_style = "monokai"
rst_prolog = """
.. role:: py(code)
    :class: highlight
    :language: python
"""
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
templates_path = ["_templates"]

## Sections filled by globs

SECTIONS = ("tutorials", "benchmarks")


def drop_empty_globs(app, docname: str, source: list[str]) -> None:
    r"""Removes the glob of a section page (``tutorials/*``) while its folder holds no
    page yet, so that an empty section builds without warning."""

    if docname in SECTIONS:
        pattern = f"{docname}/*"
        if not any(doc.startswith(f"{docname}/") for doc in app.env.found_docs):
            source[0] = source[0].replace(pattern, "")


def setup(app):
    app.connect("source-read", drop_empty_globs)
