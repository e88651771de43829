"""Every public module, class, function and method has a docstring, and the
API reference names the objects the documentation promises.

Public means: no leading underscore, and defined where it is found (a name a
module imports from elsewhere, such as the Twisted names that
``provisioningserver.twisted.protocols.amp`` re-exports, is checked where it
is defined, or not at all when that is outside this project). Dunder methods
are not checked. Nothing here builds the docs: the build itself
(``tox -e docs``, with ``-n``) checks that every reference resolves.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from zope.interface.interface import InterfaceClass

import maasserver
import provisioningserver

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "doc"

#: Objects the API reference must document (issue 4), each by a directive
#: naming it exactly.
ANCHORS = [
    "maasserver.eventloop",
    "provisioningserver.rpc.region",
    "maasserver.rpc.regionservice.Region",
    "provisioningserver.rpc.cluster",
    "provisioningserver.rpc.clusterservice.Cluster",
    "maasserver.rpc.getAllClients",
    "maasserver.rpc.getClientFor",
    "maasserver.utils.asynchronous.gather",
    "provisioningserver.rpc.clusterservice.ClusterClientService.getClient",
]


def _isPublic(name: str) -> bool:
    return not name.startswith("_")


def publicModules() -> list[str]:
    """Name every public module of both packages, packages included."""
    names = []
    for package in (provisioningserver, maasserver):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(
            package.__path__, prefix=package.__name__ + "."
        ):
            if all(_isPublic(part) for part in info.name.split(".")):
                names.append(info.name)
    return sorted(names)


def _hasDoc(obj: Any) -> bool:
    doc = getattr(obj, "__doc__", None)
    return isinstance(doc, str) and doc.strip() != ""


def _unwrapMember(member: Any) -> Any:
    """The function behind a method-like class attribute, else ``None``."""
    if isinstance(member, staticmethod | classmethod):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    if inspect.isfunction(member):
        return member
    return None


def _missingInClass(qualname: str, cls: type) -> Iterator[str]:
    for name, member in vars(cls).items():
        if not _isPublic(name):
            continue
        func = _unwrapMember(member)
        if func is not None and not _hasDoc(func):
            yield f"{qualname}.{name}"


def _missingInInterface(qualname: str, iface: InterfaceClass) -> Iterator[str]:
    for name in iface.names():
        if _isPublic(name) and not iface[name].getDoc().strip():
            yield f"{qualname}.{name}"


def missingDocstrings(module: ModuleType) -> Iterator[str]:
    """Name every public object defined in ``module`` that lacks a docstring."""
    if not _hasDoc(module):
        yield module.__name__
    for name, obj in vars(module).items():
        if not _isPublic(name):
            continue
        qualname = f"{module.__name__}.{name}"
        if isinstance(obj, InterfaceClass):
            if obj.__module__ != module.__name__:
                continue
            if not obj.getDoc().strip():
                yield qualname
            yield from _missingInInterface(qualname, obj)
        elif inspect.isclass(obj):
            if obj.__module__ != module.__name__ or obj.__name__ != name:
                continue  # Imported, or an alias documented where defined.
            if not _hasDoc(obj):
                yield qualname
            yield from _missingInClass(qualname, obj)
        elif inspect.isfunction(obj):
            if obj.__module__ != module.__name__ or obj.__name__ != name:
                continue
            if not _hasDoc(obj):
                yield qualname


def test_public_modules_are_found():
    modules = publicModules()
    assert "provisioningserver.rpc.clusterservice" in modules
    assert "maasserver.utils.asynchronous" in modules


@pytest.mark.parametrize("module", publicModules())
def test_public_objects_have_docstrings(module):
    missing = list(missingDocstrings(importlib.import_module(module)))
    assert missing == [], f"missing docstrings: {', '.join(missing)}"


#: Decorated functions whose documented signature autodoc reads through
#: ``functools.wraps`` (``__wrapped__``): (function, parameters as shown).
DECORATED = [
    ("maasserver.rpc.getClientFor", "(uuid, timeout=0)"),
    ("maasserver.rpc.getAllClients", "()"),
    ("provisioningserver.rpc.getRegionClient", "(timeout=0)"),
    ("maasserver.utils.asynchronous.gather", "(calls, timeout=10.0, *, reactor=None)"),
]


@pytest.mark.parametrize(("name", "expected"), DECORATED)
def test_decorated_functions_keep_their_signatures(name, expected):
    module, _, attr = name.rpartition(".")
    func = getattr(importlib.import_module(module), attr)
    signature = inspect.signature(func)
    shown = signature.replace(
        parameters=[
            p.replace(annotation=p.empty) for p in signature.parameters.values()
        ],
        return_annotation=signature.empty,
    )
    assert str(shown) == expected
    assert _hasDoc(func)


def test_checker_notices_a_missing_docstring():
    mod = ModuleType("fake", "A module.")

    class Documented:
        """A class."""

        def method(self):
            pass

        def _private(self):
            pass

    def function():
        pass

    Documented.__module__ = function.__module__ = "fake"
    mod.Documented = Documented
    mod.function = function
    assert sorted(missingDocstrings(mod)) == ["fake.Documented.method", "fake.function"]


# The API reference.

#: An autodoc directive and the object it names, e.g.
#: ``.. autofunction:: maasserver.rpc.getClientFor(uuid, timeout=0)``.
DIRECTIVE = re.compile(
    r"^\s*\.\.\s+auto(?:module|class|function|method|exception|data|attribute"
    r"|interface|property|decorator)::\s+([\w.]+)",
    re.MULTILINE,
)
CURRENTMODULE = re.compile(r"^\s*\.\.\s+(?:current|py:)?module::\s+([\w.]+)", re.M)


def apiSources() -> list[Path]:
    """The reST files of the API reference: ``doc/api.rst`` and ``doc/api/``."""
    return [DOC / "api.rst", *sorted((DOC / "api").glob("**/*.rst"))]


def documentedNames() -> set[str]:
    """Every object an autodoc directive of the API reference names.

    A directive's name is taken as written and also, when the file sets a
    current module, relative to it (autodoc accepts both).
    """
    names: set[str] = set()
    for source in apiSources():
        text = source.read_text(encoding="utf-8")
        modules = CURRENTMODULE.findall(text)
        for name in DIRECTIVE.findall(text):
            names.add(name)
            names.update(f"{module}.{name}" for module in modules)
    return names


def test_api_reference_exists():
    assert (DOC / "api.rst").is_file()


@pytest.mark.parametrize("anchor", ANCHORS)
def test_api_reference_documents(anchor):
    assert anchor in documentedNames(), (
        f"no autodoc directive in {[str(p.relative_to(ROOT)) for p in apiSources()]}"
        f" names {anchor}"
    )


def test_api_reference_covers_every_public_module():
    documented = documentedNames()
    missing = [name for name in publicModules() if name not in documented]
    assert missing == [], f"modules without an automodule: {missing}"
