"""The official `openai` Python package at the proxy's OpenAI-compatible `/v1`, through real mitmdump
and our addon, against the simulated backend (strict: it rejects what the real backend rejects)."""

import json
from pathlib import Path
import time

import pytest
from openai import OpenAI, RateLimitError

from tests.support.procs import FakeBackend, Proxy
from tests.support.wait import wait_for

pytestmark = [pytest.mark.client, pytest.mark.e2e]

MODEL = "gpt-5.1-codex"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("v1")
    pool = tmp / "pool"
    pool.mkdir()
    backend = FakeBackend(["alice", "bob"], pool)
    backend.control("POST", "config", {"log_bodies": True})
    proxy = Proxy(backend.url, tmp / "proxy", f"pool_dir: {pool}\ndata_dir: data\npolicy: round_robin\n"
                                              "usage_poll_seconds: 0\nledger_flush_seconds: 0.2\n")
    yield backend, proxy
    proxy.stop()
    backend.stop()


@pytest.fixture
def client(world):
    backend, proxy = world
    backend.control("DELETE", "faults")
    backend.clear_requests()
    return OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-anything-the-proxy-drops", max_retries=0)


def turns(backend):
    return [r for r in backend.requests() if r["path"].startswith("/backend-api/codex/responses")]


def test_chat_completion_non_stream(world, client):
    backend, _ = world
    done = client.chat.completions.create(model=MODEL, max_tokens=50, temperature=0.2, messages=[
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello"}])
    assert done.object == "chat.completion"
    assert done.choices[0].message.content.startswith("Answer from fake account")
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    [sent] = turns(backend)
    body = sent["body"]
    assert body["instructions"] == "You are terse." and body["store"] is False and body["stream"] is True
    assert "max_tokens" not in body and "temperature" not in body
    assert "sk-anything" not in json.dumps(sent["headers"])


def test_chat_completion_stream_with_usage(world, client):
    stream = client.chat.completions.create(model=MODEL, stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "hello"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Answer from fake account")
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


def test_chat_tool_call_round_trip(world, client):
    backend, _ = world
    messages = [{"role": "user", "content": "RUN_TOOL please"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert "sunny" in second.choices[0].message.content
    sent = turns(backend)[-1]["body"]["input"]
    assert [i["type"] for i in sent[-2:]] == ["function_call", "function_call_output"]
    served = [r["account"] for r in turns(backend)]
    assert served[0] == served[1]  # the derived conversation key kept it on one account


def test_chat_tool_call_streamed(world, client):
    stream = client.chat.completions.create(model=MODEL, stream=True, tools=[WEATHER],
                                            messages=[{"role": "user", "content": "RUN_TOOL now"}])
    calls, finish = {}, None
    for chunk in stream:
        for c in chunk.choices[0].delta.tool_calls or ():
            entry = calls.setdefault(c.index, {"id": c.id, "name": "", "arguments": ""})
            entry["name"] += c.function.name or ""
            entry["arguments"] += c.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert "city" in json.loads(calls[0]["arguments"])


def test_structured_output_with_a_json_schema(world, client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    done = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a person"}],
                                          response_format={"type": "json_schema", "json_schema": {
                                              "name": "person", "schema": schema, "strict": True}})
    person = json.loads(done.choices[0].message.content)
    assert set(person) == {"name", "age"}
    fmt = turns(world[0])[-1]["body"]["text"]["format"]
    assert fmt["type"] == "json_schema" and fmt["name"] == "person" and fmt["schema"] == schema


def test_responses_api_stream_and_non_stream(world, client):
    backend, _ = world
    with client.responses.stream(model=MODEL, input="hello", max_output_tokens=100,
                                 extra_headers={"x-session-id": "sdk-r"}) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas).startswith("Answer from fake account") and final.usage.total_tokens > 0
    done = client.responses.create(model=MODEL, input=[{"role": "developer", "content": "Be brief."},
                                                       {"role": "user", "content": "hi"}],
                                   extra_headers={"x-session-id": "sdk-r"})
    assert done.output_text.startswith("Answer from fake account") and done.usage.total_tokens > 0
    first, second = turns(backend)
    assert "max_output_tokens" not in first["body"] and first["body"]["instructions"]
    assert second["body"]["instructions"] == "Be brief."
    assert first["account"] == second["account"]


def test_models_list(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert "gpt-5.1-codex" in ids and all(m.object == "model" for m in models.data)


def test_failover_during_a_chat_stream(world, client):
    backend, _ = world
    backend.fault(kind="usage_limit", count=1)  # the first account asked answers 429 usage_limit_reached
    stream = client.chat.completions.create(model=MODEL, stream=True, messages=[{"role": "user", "content": "hi"}],
                                            extra_headers={"x-session-id": "failover-1"})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    served = [(r["account"], r["status"]) for r in turns(backend)]
    assert len(served) == 2 and served[0][0] != served[1][0] and [s for _, s in served] == [429, 200]
    assert text == f"Answer from fake account {served[1][0]}."


def test_all_limited_is_a_429_in_openai_format(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    backend = FakeBackend(["alice", "bob"], pool)
    proxy = Proxy(backend.url, tmp_path / "proxy", f"pool_dir: {pool}\ndata_dir: data\nusage_poll_seconds: 0\n")
    try:
        backend.fault(kind="usage_limit", count=2, resets_in_seconds=3600)
        client = OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(RateLimitError) as caught:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        error = caught.value.body
        assert error["type"] == error["code"] == "usage_limit_reached" and "param" in error
        assert "usage limit" in error["message"] and error["resets_at"] > time.time() + 3000
        assert len(turns(backend)) == 2  # both accounts tried (the client followed the 307), then the honest answer
    finally:
        proxy.stop()
        backend.stop()


def test_not_json_and_unknown_paths_are_answered_in_openai_format(world):
    _, proxy = world
    r = proxy.http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = proxy.http.post("/v1/chat/completions", json={"model": MODEL, "n": 2, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = proxy.http.post("/v1/embeddings", json={"model": "x", "input": "y"})
    assert r.status_code == 404 and "/v1/chat/completions" in r.json()["error"]["message"]


def test_ledger_and_metrics_count_v1_traffic(world, client):
    backend, proxy = world
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "count me"}])
    wait_for(lambda: any(r.get("model") == MODEL and r.get("requests") for r in
                         proxy.http.get("/admin/usage", params={"group": "account,model"}).json().get("rows", [])),
             10, "the chat turn in the ledger")
    metrics = proxy.http.get("/metrics").text
    assert f'model="{MODEL}"' in metrics


def readme_block(heading: str, lang: str) -> str:
    """The first ```lang block after `heading` in the README (what users copy)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index(heading):]
    start = section.index(f"```{lang}\n") + len(lang) + 4
    return section[start:section.index("```", start)]


def test_the_readme_python_example_runs_as_written(world):
    _, proxy = world
    code = readme_block("### Any OpenAI-style client", "python").replace("http://127.0.0.1:8989", proxy.url)
    code = code.replace("        ...", "        seen.append(event.type)")
    scope = {"seen": []}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["chat"].choices[0].message.content.startswith("Answer from fake account")
    assert "response.completed" in scope["seen"]


def test_no_client_key_or_query_reaches_upstream(world):
    """OpenAI-style SDKs carry keys in several headers, and some tools put them in the query."""
    backend, proxy = world
    backend.clear_requests()
    secret = "sk-client-secret-must-stay-here"
    r = proxy.http.post(f"/v1/chat/completions?api-key={secret}&x=1",
                        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
                        headers={"authorization": f"Bearer {secret}", "api-key": secret, "x-api-key": secret,
                                 "openai-organization": secret, "openai-project": secret})
    assert r.status_code == 200
    [sent] = turns(backend)
    assert secret not in json.dumps(sent) and sent["path"] == "/backend-api/codex/responses"


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_compressed_body_is_translated(world, encoding):
    import gzip

    from codex_pool.core import zstd
    _, proxy = world
    raw = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "packed"}]}).encode()
    packed = gzip.compress(raw) if encoding == "gzip" else zstd.compress(raw)
    r = proxy.http.post("/v1/chat/completions", content=packed,
                        headers={"content-type": "application/json", "content-encoding": encoding})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("Answer from fake account")


def test_chat_chunks_reach_the_client_as_the_backend_streams(world):
    """Translated on the fly: the first content chunk arrives long before the stream ends."""
    backend, proxy = world
    backend.control("POST", "config", {"stream_delay": 0.2, "deltas": 6})
    try:
        arrivals = []
        t0 = time.monotonic()
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "slowly"}]}
        with proxy.http.stream("POST", "/v1/chat/completions", json=body) as r:
            for chunk in r.iter_raw():
                arrivals.append((time.monotonic() - t0, chunk))
        first = next(t for t, c in arrivals if b'"content":"' in c and b'"content":""' not in c)
        assert arrivals[-1][0] > 1.5 and first < arrivals[-1][0] - 1.0, arrivals
        assert b"".join(c for _, c in arrivals).endswith(b"data: [DONE]\n\n")
    finally:
        backend.control("POST", "config", {"stream_delay": 0.0, "deltas": 3})
