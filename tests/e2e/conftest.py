import pytest

from tests.support.procs import FakeBackend, Proxy
from tests.support.proxy_world import ProxyWorld


@pytest.fixture
def start(tmp_path):
    """Factory fixture: start(names, config=...) → (backend, proxy); both stopped at the end."""
    started = []

    def _start(names=("alice", "bob"), config=None, extra=None, scripts=None, backend_extra=None):
        pool = tmp_path / "pool"
        pool.mkdir(exist_ok=True)
        backend = FakeBackend(list(names), pool, extra=backend_extra)
        started.append(backend)
        cfg = config if config is not None else "pool_dir: pool\ndata_dir: data\npolicy: round_robin\n"
        if "token_url" not in cfg:  # refreshes go to the simulated backend, never the real auth server
            cfg += f"token_url: {backend.url}/oauth/token\n"
        proxy = Proxy(backend.url, tmp_path, cfg, extra=extra, scripts=scripts)
        started.append(proxy)
        return backend, proxy

    yield _start
    for p in reversed(started):
        p.stop()


@pytest.fixture
def own_world(tmp_path):
    """Factory fixture: own_world(settings, scripts=...) → a ProxyWorld for this test alone (for
    settings the module's shared one does not have); stopped at the end."""
    made = []

    def make(settings="", scripts=None):
        world = ProxyWorld(tmp_path / f"world{len(made)}", settings, scripts=scripts)
        made.append(world)
        return world

    yield make
    for world in made:
        world.stop()
