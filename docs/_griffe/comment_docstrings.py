"""A griffe extension that reads the code's documentation as it is written, for the reference pages.

* An attribute documented by ``#:`` comment lines just above it gets them as its docstring. The code documents
  settings, states and constants that way (as Sphinx's autodoc reads them); griffe reads only string docstrings, so
  without this the reference pages would show those attributes bare.
* A paragraph of a docstring that is a drawing (a tree in box-drawing characters, as `inferq.errors` opens with) is
  kept as a preformatted block; read as Markdown, its lines would run together into one paragraph.
"""

from __future__ import annotations

import ast
from typing import Any

from griffe import Attribute, Docstring, Extension, Object

#: Characters that only a drawing uses.
DRAWING = ("├", "└", "│", "─┐", "─┘")


def _keep_drawings(text: str) -> str:
    paragraphs = text.split("\n\n")
    for index, paragraph in enumerate(paragraphs):
        if any(mark in paragraph for mark in DRAWING) and not paragraph.lstrip().startswith("```"):
            paragraphs[index] = f"```text\n{paragraph}\n```"
    return "\n\n".join(paragraphs)


class CommentDocstrings(Extension):
    """``#:`` comments as attribute docstrings; drawings in docstrings kept preformatted."""

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

    def on_instance(self, *, node: ast.AST | Any, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _keep_drawings(obj.docstring.value)
