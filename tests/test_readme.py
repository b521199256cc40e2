"""README.md is a test: every `cactus ...` command in its bash blocks runs as written, and every
Python block runs verbatim, in one session, in order. The hub is a local HF cache holding a tiny
chat model under the names the README uses (LiquidAI/LFM2-24B-A2B, ...), so nothing touches the
network; the demo model is the one shipped in the package."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from chat_helpers import make_chat_model

README = Path(__file__).parent.parent / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def cactus_commands() -> list[str]:
    """The `cactus ...` commands of the bash blocks (comments dropped, `&&` chains split)."""
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            for part in line.split("#")[0].split("&&"):
                part = part.strip()
                if part.startswith("cactus "):
                    out.append(part)
    return out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """(cwd, env): HF_HOME caching every repo the README names, offline."""
    root = tmp_path_factory.mktemp("readme")
    repos = sorted(set(re.findall(r"\b([A-Z][\w-]*/LFM2[\w.-]*)", README.read_text())))
    for repo in repos:
        cache = root / "hf_home" / "hub" / ("models--" + repo.replace("/", "--"))
        make_chat_model(cache / "snapshots" / ("0" * 40), "moe", max_position_embeddings=4096)
        (cache / "refs").mkdir(parents=True)
        (cache / "refs" / "main").write_text("0" * 40)
    (root / "work").mkdir()
    env = dict(os.environ, HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               CACTUS_CACHE=str(root / "cache"))
    return root / "work", env


@pytest.mark.parametrize("command", cactus_commands())
def test_readme_command_runs(sandbox, command):
    cwd, env = sandbox
    argv = shlex.split(command)
    if argv[1] in ("run",):
        argv += ["--max-tokens", "8"]
    if argv[1] == "serve":
        pytest.skip("cactus serve is exercised with the openai client in test_server.py")
    if argv[1] == "bench":
        if "--synthetic" in argv:
            argv[argv.index("--synthetic") + 1] = "tiny"  # the real shapes take gigabytes
        argv += ["--runs", "1", "--prompt", "16", "--gen", "4"]
    r = subprocess.run([sys.executable, "-m", "cactus.cli", *argv[1:]], cwd=cwd, env=env, input="Hello\n",
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{command}\n{r.stderr[-2000:]}"


def test_readme_python_runs_verbatim(sandbox, monkeypatch):
    cwd, env = sandbox
    for repo in ("LiquidAI/LFM2-24B-A2B",):  # the seed's snippets load weights/lfm2-24b-a2b
        r = subprocess.run([sys.executable, "-m", "cactus.cli", "download", repo, "--quiet"], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
    monkeypatch.chdir(cwd)
    namespace: dict = {}
    for code in blocks("python"):
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
