"""Sphinx directives of maas-rpc's documentation.

``.. maas-rpc-settings::``
    The settings list, generated from
    :data:`provisioningserver.settings.SETTINGS` (the table the command
    line's flags come from too), so that neither can drift. Option
    ``:roles:`` (space-separated) limits it to the settings of those roles.

``.. source:: path`` (``:pyobject: Name``)
    Like ``literalinclude`` with ``:pyobject:``, without the docstrings of
    the object and its methods: the prose around it says what it does, and a
    docstring's reST fields would show as raw markup in a code block.
"""

from __future__ import annotations

import ast
import textwrap

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList
from sphinx.directives.code import LiteralInclude


def _cell(text: str) -> str:
    return text.replace("\n", " ").replace("*", r"\*")


class SettingsTable(Directive):
    has_content = False
    option_spec = {"roles": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        from provisioningserver.settings import settingsFor

        roles = (self.options.get("roles") or "region cluster supervisor").split()
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 28 12 12 48",
            "",
            "   * - Variable (flag)",
            "     - Read by",
            "     - Default",
            "     - Meaning; when it trips",
        ]
        for s in settingsFor(*roles):
            flag = f" (``--{s.option}``)" if s.option else ""
            meaning = _cell(s.help)
            if s.trips:
                meaning += f" *When it trips:* {_cell(s.trips)}"
            lines += [
                f"   * - ``{s.name}``{flag}",
                f"     - {', '.join(sorted(s.roles))}",
                f"     - ``{s.default}``" if s.default else "     - ",
                f"     - {meaning} ({s.kind})",
            ]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, "<maas-rpc-settings>"), 0, container)
        return container.children


def _withoutDocstring(source: str) -> str:
    """Remove the docstrings of every class and function in ``source``."""
    dedented = textwrap.dedent(source)
    try:
        tree = ast.parse(dedented)
    except SyntaxError:
        return source
    spans = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        first = node.body[0] if node.body else None
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
            and len(node.body) > 1
        ):
            spans.append((first.lineno, first.end_lineno))
    lines = source.splitlines(keepends=True)
    for start, end in sorted(spans, reverse=True):
        del lines[start - 1 : end]
    return "".join(lines)


class Source(LiteralInclude):
    def run(self) -> list[nodes.Node]:
        result = super().run()
        for node in result:
            for block in node.findall(nodes.literal_block):
                text = _withoutDocstring(block.astext())
                block.children = [nodes.Text(text)]
                block.rawsource = text
        return result


def setup(app):
    app.add_directive("maas-rpc-settings", SettingsTable)
    app.add_directive("source", Source)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
