"""Packages whose public names are imported on first use, so that the command line's parser and
`import selfsup` do not wait for PyTorch (which the names' modules load)."""
from __future__ import annotations

import importlib
import sys
from importlib.util import find_spec


def installed(name: str) -> bool:
    """Whether the module `name` can be imported (False where sys.modules blocks it with None)."""
    try:
        return find_spec(name) is not None
    except ValueError:  # in sys.modules as None: import blocked
        return False


def lazy_exports(package: str, exports: dict[str, str]):
    """(__getattr__, __dir__) for the package `package`, whose name N is `exports[N]`.N, a module
    relative to it (e.g. {"evaluate_knn": ".protocols"}), imported when N is first used."""
    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(sys.modules[package], name, value)  # later uses skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
