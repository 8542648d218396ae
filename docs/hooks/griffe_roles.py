"""Griffe extension for the API reference, so that specopt's docstrings render as they are written.

* Cross-references are written in reST roles (``:func:`msign```, ``:class:`~specopt.norms.Blocked```), which
  Markdown would print as they are. Each role becomes an optional autorefs link: a link where the object has an
  entry in the reference, its name in code where it has none (a private helper, a module not rendered), never a
  warning.
* In an ``Args:``/``Raises:``/``Returns:`` section, a continuation line indented by 5–7 spaces (where the
  Google style wants 8) is moved to 8, instead of a griffe warning ("Confusing indentation").
"""

from __future__ import annotations

import html
import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")
SECTION = re.compile(r"^(Args|Arguments|Parameters|Raises|Returns|Yields|Attributes):\s*$")


def _sections(text: str) -> str:
    """Continuation lines of Google-style sections at 8 spaces (5–7 become 8)."""
    lines, inside = text.split("\n"), False
    for i, line in enumerate(lines):
        if SECTION.match(line):
            inside = True
            continue
        if inside and line and not line.startswith(" "):
            inside = False
        indent = len(line) - len(line.lstrip(" "))
        if inside and 4 < indent < 8:
            lines[i] = " " * 8 + line.lstrip(" ")
    return "\n".join(lines)


def _target(obj: griffe.Object, name: str) -> str:
    """The full path ``name`` means where ``obj``'s docstring says it (its scope, then its module's)."""
    if name.startswith("specopt.") or name == "specopt":
        return name
    head, _, rest = name.partition(".")
    for scope in (obj, obj.parent):
        if scope is None:
            continue
        try:
            resolved = scope.resolve(head)
        except (griffe.NameResolutionError, AttributeError, KeyError):
            continue
        return f"{resolved}.{rest}" if rest else resolved
    if isinstance(obj, griffe.Class) and head in obj.all_members:
        return f"{obj.path}.{name}"
    return f"{obj.module.path}.{name}"


def _link(obj: griffe.Object, match: re.Match) -> str:
    short, name = match.group(1), match.group(2).strip()
    title = name.rsplit(".", 1)[-1] if short else name
    return (f'<autoref identifier="{html.escape(_target(obj, name))}" optional>'
            f"<code>{html.escape(title)}</code></autoref>")


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias and member.parent is obj:
            yield from _walk(member)


class ReSTRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                text = ROLE.sub(lambda m, o=obj: _link(o, m), obj.docstring.value)
                obj.docstring.value = _sections(text)
