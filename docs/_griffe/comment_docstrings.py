"""A griffe extension: an attribute documented by ``#:`` comment lines just above it gets them as its docstring.

The code documents settings, states and constants with ``#:`` comments (as Sphinx's autodoc reads them); griffe reads
only string docstrings, so without this the reference pages would show those attributes bare.
"""

from __future__ import annotations

import ast
from typing import Any

from griffe import Attribute, Docstring, Extension


class CommentDocstrings(Extension):
    """Give each attribute without a docstring the ``#:`` comment block that precedes it in its source."""

    def on_attribute_instance(self, *, node: ast.AST | Any, attr: Attribute, **kwargs: Any) -> None:
        if attr.docstring is not None or attr.lineno is None:
            return
        try:
            lines = attr.lines_collection[attr.filepath]  # type: ignore[index]
        except (KeyError, TypeError):
            return
        comment: list[str] = []
        index = attr.lineno - 2  # the line above the attribute, 0-based
        while index >= 0 and lines[index].lstrip().startswith("#:"):
            comment.append(lines[index].lstrip()[2:].strip())
            index -= 1
        if comment:
            attr.docstring = Docstring("\n".join(reversed(comment)), lineno=index + 2, parent=attr)
