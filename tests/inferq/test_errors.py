from __future__ import annotations

import inspect

import inferq.errors as errors


def all_errors() -> list[type[errors.InferqError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.InferqError)]


def test_one_rooted_tree_with_unique_stable_codes() -> None:
    classes = all_errors()
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), "every error has a code of its own"
    assert all(issubclass(c, errors.InferqError) for c in classes)


def test_the_module_docstring_draws_every_error() -> None:
    doc = errors.__doc__ or ""
    for cls in all_errors():
        assert cls.__name__ in doc, f"{cls.__name__} missing from the tree in errors.py"
