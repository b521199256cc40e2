"""Where converted models live, and `cactus download`: fetch a HuggingFace checkpoint (only what we
need) and convert it into the cactus home.

The home is $CACTUS_HOME, else $XDG_CACHE_HOME/cactus, else ~/.cache/cactus; models are
<home>/models/<name>. A repo's INT4 conversion (the default) is named after the repo
(LiquidAI/LFM2-8B-A1B -> lfm2-8b-a1b), every other quant gets its own directory with the quant
as a suffix (lfm2-8b-a1b-int8). huggingface_hub does the fetching: progress bars, resumable
downloads into its cache, and the usual environment (HF_TOKEN, HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .convert import convert

NEEDED = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
          "tokenizer_config.json", "chat_template.jinja", "chat_template.json", "special_tokens_map.json",
          "generation_config.json"]
DEFAULT_QUANT = "int4"


class DownloadError(RuntimeError):
    pass


def home() -> Path:
    """The cactus home: $CACTUS_HOME, else $XDG_CACHE_HOME/cactus, else ~/.cache/cactus."""
    if os.environ.get("CACTUS_HOME"):
        return Path(os.environ["CACTUS_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    cache = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: relative is ignored
    return cache / "cactus"


def models_dir() -> Path:
    return home() / "models"


def model_name(repo_id: str, quant: str = DEFAULT_QUANT) -> str:
    """LiquidAI/LFM2-8B-A1B -> lfm2-8b-a1b (int4), lfm2-8b-a1b-int8 (any other quant)."""
    name = repo_id.rstrip("/").split("/")[-1].lower()
    return name if quant == DEFAULT_QUANT else f"{name}-{quant}"


def model_dir(repo_id: str, quant: str = DEFAULT_QUANT) -> Path:
    """Where `cactus download repo_id --quant quant` puts the converted model."""
    return models_dir() / model_name(repo_id, quant)


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
            f"offline with: cactus convert PATH/TO/CHECKPOINT {model_dir(repo_id)}") from None
    except (HfHubHTTPError, OSError) as e:
        raise DownloadError(f"could not download {repo_id}: {e}") from None


def download(repo_id: str, quant: str = DEFAULT_QUANT, out: str | Path | None = None,
             revision: str | None = None, force: bool = False, progress: bool = True) -> Path:
    """Fetch and convert `repo_id` into `out` (default: model_dir(repo_id, quant)); reuses a finished
    conversion of the same quant. An explicit `out` holding anything else is replaced only with force."""
    path = Path(out) if out else model_dir(repo_id, quant)
    if not force and converted_quant(path) == quant:
        return path
    if out and path.exists() and not force:
        held = converted_quant(path)
        raise FileExistsError(f"{path} already exists and holds {f'a {held} model' if held else 'something else'}"
                              f", not {quant} (pass --force to replace it, or choose another --out)")
    snapshot = fetch(repo_id, revision)
    return convert(snapshot, path, quant=quant, progress=progress, overwrite=True)


# ----------------------------------------------------------------------------- cactus list / rm

@dataclass(frozen=True)
class Entry:
    name: str
    quant: str  # "?" where the directory is not a finished cactus model
    size: int   # bytes of its files
    path: Path


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def list_models() -> list[Entry]:
    """The model directories in the home, by name (staging and removal leftovers, dot-named, skipped)."""
    root = models_dir()
    if not root.is_dir():
        return []
    return [Entry(p.name, converted_quant(p) or "?", _size(p), p)
            for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def remove(name: str) -> Entry:
    """Delete the model `name` (as `cactus list` names it) from the home; returns what was removed.
    It is first renamed aside, so no reader ever sees it half deleted; a process that has its weights
    mapped keeps them (the files are unlinked, not truncated)."""
    root = models_dir()
    path = root / name if Path(name).name == name else Path(name).expanduser()  # a name, or its full path
    if path.name in ("", ".", "..") or path.resolve().parent != root.resolve():
        raise ValueError(f"{name}: not a model in {root}: cactus rm removes only the models `cactus list` shows")
    if not path.is_dir() or path.is_symlink():
        raise FileNotFoundError(f"{name}: no such model in {root} (`cactus list` shows them)")
    entry = Entry(path.name, converted_quant(path) or "?", _size(path), path)
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.removing-", dir=root))
    path.rename(aside / path.name)
    shutil.rmtree(aside)
    return entry
