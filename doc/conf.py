"""Sphinx configuration for maas-rpc's documentation.

The build is offline: no inventory is fetched. References to objects outside
this project that cannot be resolved are ignored by the narrow rules in
``nitpick_ignore_regex`` below, never by dropping ``-n``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

project = "maas-rpc"
author = "The maas-rpc developers"
copyright = "2026, The maas-rpc developers"  # noqa: A001
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "repoze.sphinx.autointerface",
]

autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"show-inheritance": True}

nitpicky = True
nitpick_ignore_regex = [
    # Twisted, crochet, zope.interface and OpenSSL publish no inventory this
    # offline build can read; their names stay unlinked.
    (r"py:.*", r"(twisted|crochet|zope|OpenSSL)(\..*)?"),
    # AMP names as written in docstrings through MAAS's import path.
    (r"py:.*", r"amp\..*"),
    # Standard library and builtin types named in annotations.
    (r"py:.*", r"(urllib\.parse\..*|collections\.abc\..*|typing\..*|os\.PathLike)"),
    (r"py:class", r"(Any|Deferred|Failure|IConnection|ParseResult|Callable|Iterator)"),
    (r"py:class", r"(bytes|str|int|float|bool|list|dict|tuple|object|None|type)"),
    (r"py:(exc|class)", r"(ValueError|TypeError|RuntimeError|AssertionError)"),
]

html_theme = "alabaster"
exclude_patterns = ["_build"]
