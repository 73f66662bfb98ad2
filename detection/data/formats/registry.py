"""The one registry of data formats: a name -> its `SplitReader` subclass.

A format is one module whose reader registers itself::

    @register_format("myformat")
    class MyReader(SplitReader): ...

and is then `data.format=myformat` once the module is imported (the built-in ones are imported by
`detection.data.formats`). Nothing else names the formats.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from detection.data.formats.base import SplitPaths, SplitReader, read_class_list

__all__ = ["FORMATS", "make_reader", "register_format"]

R = TypeVar("R", bound=type[SplitReader])

_READERS: dict[str, type[SplitReader]] = {}
# Read-only and live: name -> reader class, in registration order; `tuple(FORMATS)` lists the names.
FORMATS: Mapping[str, type[SplitReader]] = MappingProxyType(_READERS)


def register_format(name: str) -> Callable[[R], R]:
    """Class decorator: the reader of data format `name` (its `format` attribute becomes `name`)."""

    def register(reader_class: R) -> R:
        if not (isinstance(reader_class, type) and issubclass(reader_class, SplitReader)):
            raise TypeError(f"data format {name!r}: {reader_class!r} is not a SplitReader subclass")
        known = _READERS.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (
            reader_class.__module__,
            reader_class.__qualname__,
        ):  # the same class again (a module reloaded) replaces itself; another one is a clash
            raise ValueError(
                f"data format {name!r} is registered already by {known.__module__}.{known.__qualname__}"
            )
        reader_class.format = name
        _READERS[name] = reader_class
        return reader_class

    return register


def make_reader(
    format: str,
    root: Path | None,
    files: Mapping[str, SplitPaths] | None = None,
    class_names: Sequence[str] | str | None = None,
    invalid_boxes: str = "error",
) -> SplitReader:
    """The reader of `format` (one of `FORMATS`); `class_names` may name a file of names, one a line."""
    reader_class = _READERS.get(format)
    if reader_class is None:
        raise ValueError(f"unknown data.format {format!r}; choose one of {tuple(_READERS)}")
    if isinstance(class_names, str):
        class_names = read_class_list(Path(class_names).expanduser())
    return reader_class(root, files, class_names, invalid_boxes)
