"""A stage package's interface: the names other stages may use, loaded when first asked for.

Each stage package lists its interface (name -> the module inside it that defines it). Other
stages, the command line and the rule files import those names from the package and nothing
else from it (tests/test_structure.py checks). Loading on first use keeps importing one module
of a stage from importing the rest (torch, SimpleITK, pydicom) into jobs that never need them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_interface(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """(`__getattr__`, `__all__`) for `package`, whose interface `names` maps each public name
    to the module (relative to the package) that defines it."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    return __getattr__, sorted(names)
