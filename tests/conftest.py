"""Test setup: tests import their helpers (tests/helpers.py) by module name, and the cactus home
(CACTUS_HOME: converted and synthetic models) is a per-session temporary directory, so no test
writes to ~/.cache; subprocesses inherit it through the environment."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def cactus_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("cactus_home")
    old = os.environ.get("CACTUS_HOME")
    os.environ["CACTUS_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("CACTUS_HOME", None)
    else:
        os.environ["CACTUS_HOME"] = old
