"""Sphinx configuration: `nox -s docs` (or `sphinx-build -W --keep-going -b html docs build/docs`)."""

from importlib import metadata

project = "softdist"
author = "the softdist authors"
copyright = "the softdist authors, BSD-3-Clause"
release = metadata.version("softdist")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",  # no network in CI: only used if reachable, see intersphinx_mapping
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
# Markdown pages are GitHub-readable too; headings get anchors for [text](page.md#anchor) links.
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()
intersphinx_mapping: dict[str, tuple[str, None]] = {}  # offline builds: no inventories fetched

html_theme = "alabaster"
html_theme_options = {"description": "softmax cross-entropy and exact distances on any array library"}
html_static_path: list[str] = []
