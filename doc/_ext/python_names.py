"""Resolve a docstring's references the way Python resolves its names.

Docstrings name things as their module's code does: ``:class:`Client``` where
the module imported ``Client``, ``:class:`amp.Command``` where it did ``from
provisioningserver.twisted.protocols import amp``. Sphinx looks such names up
only among documented objects, so they would not resolve. When Sphinx (and
intersphinx) cannot resolve a Python reference, this extension looks the name
up in the module (and class) the reference was written in, follows it to the
object's canonical name (``provisioningserver.rpc.common.Client``,
``twisted.protocols.amp.Command``), and resolves that instead, locally or
through intersphinx. Nothing is guessed: a name the module does not bind
stays unresolved, and ``-n`` reports it.

``python_names_aliases`` maps a leading name to a module for references made
outside any module context (prose pages): ``{"amp":
"provisioningserver.twisted.protocols.amp"}`` lets a page write
``:class:`amp.Command```.

It also shows :class:`threading.local`, not its private implementation
``_thread._local``, among a class's bases.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from types import ModuleType
from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.ext import intersphinx

#: Bases shown under a public name rather than their implementation's.
PUBLIC_BASES = {threading.local: ":py:class:`threading.local`"}


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _getpath(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _canonical(obj: Any) -> str | None:
    """The name an object is documented under, if it has one."""
    if isinstance(obj, ModuleType):
        return obj.__name__
    if inspect.isclass(obj) or inspect.isroutine(obj):
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if module and qualname and "<locals>" not in qualname:
            return f"{module}.{qualname}"
    return None


def canonicalName(
    target: str, modname: str | None, clsname: str | None, aliases: dict[str, str]
) -> str | None:
    """Follow ``target`` from the given scope to an object's canonical name.

    :param target: a dotted name as written, e.g. ``amp.Command``.
    :param modname: the module the reference was written in, if any.
    :param clsname: the class (within ``modname``) it was written in, if any.
    :param aliases: leading names to modules, tried last.
    :return: the canonical dotted name, or ``None`` when ``target`` does not
        name anything there.
    """
    parts = target.split(".")
    scopes: list[Any] = []
    module = _import(modname) if modname else None
    if module is not None:
        if clsname:
            try:
                scopes.append(_getpath(module, clsname))
            except AttributeError:
                pass
        scopes.append(module)
    start: Any = None
    for scope in scopes:
        if hasattr(scope, parts[0]):
            start = scope
            break
    else:
        if parts[0] not in aliases:
            return None
        start = _import(aliases[parts[0]])
        parts = parts[1:]
        if start is None:
            return None
    # Walk the path; the deepest object with a canonical name anchors the
    # result, and any plain attributes after it are appended.
    obj = start
    anchor, rest = _canonical(start), list(parts)
    for index, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return None
        name = _canonical(obj)
        if name is not None:
            anchor, rest = name, parts[index + 1 :]
    if anchor is None:
        return None
    return ".".join([anchor, *rest])


def resolve(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.Element
) -> nodes.Element | None:
    """Resolve a Python reference that nothing else could, by its canonical
    name; see the module's description."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    name = canonicalName(
        target,
        node.get("py:module"),
        node.get("py:class"),
        app.config.python_names_aliases,
    )
    if name is None or name == target:
        return None
    retry = node.deepcopy()
    retry["reftarget"] = name
    retry["py:module"] = None
    retry["py:class"] = None
    retry["refspecific"] = False
    domain = env.get_domain("py")
    found = domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], name, retry, contnode
    )
    if found is None:
        found = intersphinx.missing_reference(app, env, retry, contnode)
    return found


def publicBases(
    app: Sphinx, name: str, obj: Any, options: Any, bases: list[Any]
) -> None:
    """Show public names for bases whose implementation is private."""
    for index, base in enumerate(bases):
        if isinstance(base, type) and base in PUBLIC_BASES:
            bases[index] = PUBLIC_BASES[base]


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the configuration value and the event handlers."""
    app.add_config_value("python_names_aliases", {}, "env", types=[dict])
    # After intersphinx's own handler (priority 500): only what it could not
    # resolve as written comes here.
    app.connect("missing-reference", resolve, priority=900)
    app.connect("autodoc-process-bases", publicBases)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
