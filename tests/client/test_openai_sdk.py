"""The official openai Python package through real mitmdump + our addon (the README's example)."""

import pytest
from openai import OpenAI

from tests.support.procs import FakeBackend, Proxy

pytestmark = [pytest.mark.client, pytest.mark.e2e]


@pytest.fixture
def proxy(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    backend = FakeBackend(["alice", "bob"], pool)
    proxy = Proxy(backend.url, tmp_path / "proxy", f"pool_dir: {pool}\ndata_dir: data\npolicy: round_robin\n")
    yield backend, proxy
    proxy.stop()
    backend.stop()


def test_streamed_responses_with_a_session_header_stay_on_one_account(proxy):
    backend, p = proxy
    client = OpenAI(base_url=f"{p.url}/backend-api/codex", api_key="unused-the-proxy-replaces-it", max_retries=0)
    texts = []
    for conversation in ("sdk-1", "sdk-1", "sdk-2"):
        with client.responses.stream(
            model="gpt-5.1-codex", instructions="You are terse.", input="hello", store=False,
            extra_headers={"session-id": conversation},
        ) as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        texts.append("".join(deltas))
        assert final.usage.total_tokens > 0
    assert all(t.startswith("Answer from fake account") for t in texts)
    served = [r["account"] for r in backend.requests() if r["path"].startswith("/backend-api/codex/responses")]
    assert served[0] == served[1] != served[2]
    assert "unused-the-proxy-replaces-it" not in str([r["headers"] for r in backend.requests()])
