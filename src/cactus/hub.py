"""`cactus download`: fetch a HuggingFace checkpoint (only what we need) and convert it.

huggingface_hub does the fetching: progress bars, resumable downloads into its cache, and the
usual environment (HF_TOKEN, HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT).
"""

from __future__ import annotations

import json
from pathlib import Path

from .convert import convert

NEEDED = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
          "tokenizer_config.json", "chat_template.jinja", "chat_template.json", "special_tokens_map.json",
          "generation_config.json"]
WEIGHTS_ROOT = Path("weights")


class DownloadError(RuntimeError):
    pass


def default_dir(repo_id: str) -> Path:
    """weights/<repo name, lower-cased>: LiquidAI/LFM2-24B-A2B -> weights/lfm2-24b-a2b."""
    return WEIGHTS_ROOT / repo_id.rstrip("/").split("/")[-1].lower()


def converted_quant(path: Path) -> str | None:
    """The quantization of a finished cactus model directory, or None if there is none."""
    try:
        return json.loads((path / "config.json").read_text())["cactus"]["quant"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fetch(repo_id: str, revision: str | None = None) -> Path:
    """Download (or find in the HF cache) the files a conversion needs; returns the snapshot dir."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=NEEDED))
    except RepositoryNotFoundError:
        raise DownloadError(f"{repo_id}: no such model on the Hugging Face hub (or it needs HF_TOKEN)") from None
    except LocalEntryNotFoundError as e:
        raise DownloadError(
            f"could not download {repo_id}: the Hugging Face hub is not reachable and the model is not in "
            f"the local cache ({e.__cause__ or e}). If you have the checkpoint on disk, convert it "
            f"offline with: cactus convert PATH/TO/CHECKPOINT {default_dir(repo_id)}") from None
    except (HfHubHTTPError, OSError) as e:
        raise DownloadError(f"could not download {repo_id}: {e}") from None


def download(repo_id: str, quant: str = "int4", out: str | Path | None = None, revision: str | None = None,
             force: bool = False, progress: bool = True) -> Path:
    """Fetch and convert `repo_id` into `out` (default weights/<name>); reuses a finished conversion."""
    out = Path(out) if out else default_dir(repo_id)
    if not force and converted_quant(out) == quant:
        return out
    snapshot = fetch(repo_id, revision)
    return convert(snapshot, out, quant=quant, progress=progress, overwrite=True)
