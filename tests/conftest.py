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


@pytest.fixture(scope="module")
def demo():
    """The built-in demo model, one per test module."""
    from cactus.api import Model
    from cactus.demo import demo_path

    with Model(demo_path()) as m:
        yield m


@pytest.fixture
def start():
    """start(model, **server options) -> (openai client, port): `cactus serve` on loopback in a thread,
    stopped at the end of the test (every client call bounded by 60 s)."""
    import threading

    from openai import OpenAI

    from cactus.server import Server

    started = []

    def go(model, **kw):
        server = Server(("127.0.0.1", 0), model, "demo", **kw)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(server)
        port = server.server_address[1]
        return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60), port

    yield go
    for s in started:
        s.shutdown()
        s.server_close()
