"""The built-in demo model: a small LFM2-MoE trained by tools/train_demo.py (docs/DEMO_MODEL.md),
converted with `cactus convert`, so cactus runs with no download and no network."""

from pathlib import Path

DEMO_DIR = Path(__file__).parent / "model"


def demo_path() -> Path:
    if not (DEMO_DIR / "config.json").is_file():
        raise FileNotFoundError(f"the demo model is not installed ({DEMO_DIR} is missing); "
                                f"give a model directory or a HuggingFace repo id instead")
    return DEMO_DIR
