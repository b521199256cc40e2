"""Architectures by config `model_type`: one module each, keeping the contract of
docs/ARCHITECTURE.md. A new architecture is one module here plus its name in MODULES below."""

from ..config import ConfigError, show
from . import lfm2

MODULES = {t: m for m in (lfm2,) for t in m.MODEL_TYPES}  # model_type -> its architecture module
ARCHITECTURES = {t: m.Model for t, m in MODULES.items()}  # model_type -> its network class


def architecture(model_type, source: str = "config.json"):
    """The architecture module of a config's `model_type`, or a ConfigError naming those there are."""
    arch = MODULES.get(model_type) if isinstance(model_type, str) else None
    if arch is None:
        raise ConfigError(f"{source}: model_type {show(model_type)} is not supported "
                          f"(cactus runs {', '.join(MODULES)})")
    return arch
