"""cactus: run Liquid AI's LFM2 / LFM2-MoE models on a CPU, fast and in little memory.

    from cactus import cactus_init, cactus_complete, cactus_reset, cactus_destroy

Importing cactus loads nothing heavy: submodules are imported on first use.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "load": "cactus.engine",
    "Model": "cactus.api",
    "Completion": "cactus.api",
    "convert": "cactus.convert",
    "cactus_init": "cactus.api",
    "cactus_complete": "cactus.api",
    "cactus_reset": "cactus.api",
    "cactus_destroy": "cactus.api",
    "cactus_stop": "cactus.api",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cactus' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = list(_LAZY)
