"""`GET /v1/models` (and Codex's catalogue request): the backend's catalogue in OpenAI's list format,
answered from the proxy's copy, a stale copy refreshed in the background."""

from pathlib import Path

import pytest

from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

STALE = Path(__file__).with_name("stale_models.py")


def catalogue_requests(backend):
    return [r for r in backend.requests() if r["path"].startswith("/backend-api/codex/models")]


def test_a_stale_copy_is_answered_at_once_and_refreshed_in_the_background(start):
    backend, proxy = start(("alice", "bob"), scripts=[STALE])
    first = proxy.http.get("/v1/models")
    assert first.status_code == 200 and first.json()["object"] == "list"
    assert "gpt-5.1-codex" in [m["id"] for m in first.json()["data"]]
    assert len(catalogue_requests(backend)) == 1  # the first is forwarded through the pool
    second = proxy.http.get("/v1/models")
    assert [m["id"] for m in second.json()["data"]] == [m["id"] for m in first.json()["data"]]  # from the copy
    seen = wait_for(lambda: len(catalogue_requests(backend)) == 2 and catalogue_requests(backend), 10,
                    "the background refresh of the stale models list")
    refresh = seen[-1]
    assert dict(refresh["headers"]).get("user-agent") == "codex-pool"  # the proxy's own fetch, not a client's
    assert refresh["account"] in ("alice", "bob")


def test_models_list_without_any_account_is_an_openai_error(start):
    backend, proxy = start(("alice",))
    proxy.http.post("/admin/accounts/alice/disable")
    r = proxy.http.get("/v1/models")
    assert r.status_code == 503 and set(r.json()["error"]) >= {"message", "type", "code", "param"}
