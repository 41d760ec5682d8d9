"""Hostile or broken input, end to end (#11.11): each case answered with a clear error or passed on
untouched, the proxy's own cost bounded, the proxy serving throughout and nothing else disturbed
(no account cooled for what a client sent, no 503 of our own making)."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from codex_pool.core import zstd
from codex_pool.storage.ledger_store import LedgerStore
from tests.support.flows import CLIENT_TOKEN, CODEX_HEADERS, RESPONSES, completed_event, served_by, turn, turn_body, ws_turns
from tests.support.proxy_world import ProxyWorld
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    # client_quota: account — streams pass byte-for-byte, which the tests check by hash
    world = ProxyWorld(tmp_path_factory.mktemp("hostile"), "policy: round_robin\nledger_flush_seconds: 0.2\n"
                                                            "client_quota: account\n")
    yield world
    world.stop()


def rss_mb(pid: int) -> float:
    """The process's resident memory (VmRSS) in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def all_usable(w) -> bool:
    return all(row["usable"] for row in w.states().values())


def ledger_outcomes(world: ProxyWorld, account: str) -> list[str]:
    return [r["outcome"] for r in LedgerStore(world.data_dir / "ledger").query(None, None) if r["account"] == account]


def zstd_bomb(spaces: int, key: str) -> bytes:
    """A real Codex turn body with `spaces` bytes of JSON whitespace before its `prompt_cache_key`:
    valid JSON (upstream serves it), a few KB compressed, `spaces` bytes decoded."""
    head = json.dumps(turn_body(None)).encode()[:-1] + b","
    c = zstd.ZstdCompressor()
    parts = [c.compress(head)]
    megabyte = b" " * (1 << 20)
    parts += [c.compress(megabyte) for _ in range(spaces >> 20)]
    parts.append(c.compress(f'"prompt_cache_key": "{key}"}}'.encode(), c.FLUSH_FRAME))
    return b"".join(parts)


# --- request bodies --------------------------------------------------------------------------------


def test_a_zstd_bomb_costs_bounded_memory_and_is_forwarded_untouched(shared):
    """13 KB that decode to 400 MB used to raise the proxy's memory by 400 MB, kept afterwards
    (mitmproxy's get_content decodes whole and caches the result). Now the conversation lookup stops
    at 16 MiB, says so, and the request goes upstream byte for byte (upstream decides; it serves it)."""
    w = shared.fresh(["alice", "bob"])
    proxy = w.proxy
    for i in range(3):  # warm: the first requests load code and fill caches
        assert turn(proxy, f"warm-{i}").status_code == 200
    bomb = zstd_bomb(400 << 20, "bomb-key")
    assert len(bomb) < 64 * 1024
    before = rss_mb(proxy.proc.pid)
    mark = len(proxy.lines)
    r = turn(proxy, None, headers={"content-encoding": "zstd"}, body=bomb)
    after = rss_mb(proxy.proc.pid)
    assert r.status_code == 200, r.text[:300]
    assert completed_event(r.text)["response"]["usage"]["input_tokens"] > 100_000_000  # upstream read all 400 MB
    assert after - before < 64, f"proxy RSS went from {before:.0f} MB to {after:.0f} MB"
    seen = [s for s in w.backend.requests() if s["path"].startswith(RESPONSES)][-1]
    assert seen["body_sha256"] == hashlib.sha256(bomb).hexdigest()  # untouched
    assert seen["prompt_cache_key"] == "bomb-key"
    proxy.wait_for(r"POST /backend-api/codex/responses: the request body decodes to more than 16 MiB; "
                   r"forwarded without a conversation key", 5, start=mark)
    assert turn(proxy, "after-the-bomb").status_code == 200
    assert all_usable(w)


def test_an_undecodable_body_is_forwarded_and_answered_by_upstream(shared):
    w = shared.fresh(["alice"])
    mark = len(w.proxy.lines)
    r = turn(w.proxy, None, headers={"content-encoding": "zstd"}, body=b"\x28\xb5\x2f\xfd this is not zstd")
    assert r.status_code == 400 and "Could not parse request body" in r.text  # upstream's answer, passed on
    w.proxy.wait_for(r"the request body is not valid zstd data .*; forwarded without a conversation key", 5, start=mark)
    assert turn(w.proxy, "after").status_code == 200 and all_usable(w)  # a 400 is not the account's doing


def test_malformed_and_deeply_nested_json_bodies_are_forwarded_not_failed_locally(shared):
    """A body with the key twice is parsed to find the top-level one: 100 000 nested arrays used to
    raise RecursionError in the proxy, answered 503 `proxy_internal_error` and never forwarded."""
    w = shared.fresh(["alice"])
    nested = b'{"prompt_cache_key":"a","x":{"prompt_cache_key":"b"},"y":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for body in (nested, b'{"model": "gpt-5.1-codex", "prompt_cache_key": ', b"\xff\xfe\x00 not json at all"):
        r = turn(w.proxy, None, body=body)
        assert r.status_code == 400, r.text[:300]
        assert "Could not parse request body" in r.text and "proxy_internal_error" not in r.text
    assert len(w.served()) == 3  # every one reached upstream
    assert turn(w.proxy, "after").status_code == 200 and all_usable(w)


def test_a_huge_json_body_is_served_and_its_key_still_found(shared):
    w = shared.fresh(["alice", "bob"])
    body = json.dumps({**turn_body(None, "y" * (20 << 20)), "prompt_cache_key": "huge-conv"}).encode()  # key last
    for _ in range(2):
        assert turn(w.proxy, None, body=body).status_code == 200
    assert len(set(w.served())) == 1  # round robin would alternate: the key kept the conversation on one account


# --- request heads ---------------------------------------------------------------------------------


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh connection and read until the proxy closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("head", [
    b"POST /backend-api/codex/responses HTTP/1.1\r\nHost: x\r\nNoColonHere\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /backend-api/codex/responses HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n{}",
    b"POST /backend-api/codex/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"\x00\xff not http at all\r\n\r\n",
], ids=["header-without-colon", "bad-length", "two-lengths", "garbage"])
def test_a_malformed_request_head_is_answered_400_by_mitmproxy(shared, head):
    w = shared.fresh(["alice"])
    answer = raw_exchange(w.proxy.port, head)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request"), answer[:200]
    assert w.served() == [] and all_usable(w)
    assert turn(w.proxy, "after").status_code == 200


def test_a_flood_of_header_lines_is_answered_431_and_blames_no_account(shared):
    """20,000 header lines made the upstream drop the connection, which cooled the pool account
    that carried them. Over 64 KB of headers in over 64 lines is answered here, not forwarded."""
    w = shared.fresh(["alice"])
    r = turn(w.proxy, "flood", headers={f"x-h{i}": "v" * 40 for i in range(2000)})
    assert r.status_code == 431 and r.json()["error"]["code"] == "request_headers_too_large"
    assert w.served() == [] and all_usable(w)
    assert turn(w.proxy, "after").status_code == 200


def test_one_long_header_is_passed_on_as_it_is(shared):
    """A single 100 KB header is not a flood: it goes upstream as it is (mitmproxy 12.3 has no header
    cap either: see the report on #11.11), and upstream's answer comes back."""
    w = shared.fresh(["alice"])
    r = turn(w.proxy, "big-header", headers={"x-big": "a" * 100_000})
    assert r.status_code == 200
    [seen] = [s for s in w.backend.requests() if s["path"].startswith(RESPONSES)]
    assert ["x-big", "a" * 100_000] in seen["headers"]
    assert turn(w.proxy, "after").status_code == 200 and all_usable(w)


# --- WebSocket frames ------------------------------------------------------------------------------

MALFORMED_FRAMES = {
    "reserved-opcode": (b"\x83\x80\x00\x00\x00\x00", 1002),
    "unmasked": (b"\x81\x05hello", 1002),
    "invalid-utf8-text": (b"\x81\x82\x00\x00\x00\x00\xff\xfe", 1007),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_FRAMES))
def test_a_malformed_websocket_frame_closes_only_its_own_socket(shared, name):
    frame, code = MALFORMED_FRAMES[name]
    w = shared.fresh(["alice"])
    url = f"ws://127.0.0.1:{w.proxy.port}{RESPONSES}"
    headers = {"authorization": f"Bearer {CLIENT_TOKEN}", **CODEX_HEADERS}
    with connect(url, additional_headers={**headers, "session-id": "bystander"}, open_timeout=10) as bystander:
        with connect(url, additional_headers={**headers, "session-id": "bad"}, open_timeout=10) as bad:
            bad.socket.sendall(frame)
            with pytest.raises(ConnectionClosed) as closed:
                bad.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == code
        bystander.send(json.dumps({"type": "response.create", **turn_body("bystander", "still here")}))
        frames = []
        while not frames or frames[-1]["type"] != "response.completed":
            frames.append(json.loads(bystander.recv(timeout=10)))
    assert all_usable(w)
    assert ws_turns(w.proxy, "after")[0][-1]["type"] == "response.completed"


def test_a_frame_announcing_an_endless_payload_holds_up_only_its_socket(shared):
    w = shared.fresh(["alice"])
    url = f"ws://127.0.0.1:{w.proxy.port}{RESPONSES}"
    with connect(url, additional_headers={"authorization": f"Bearer {CLIENT_TOKEN}"}, open_timeout=10) as ws:
        try:
            ws.socket.sendall(b"\x82\xff" + (1 << 62).to_bytes(8, "big") + b"\x00\x00\x00\x00" + b"\x00" * (1 << 20))
            assert ws_turns(w.proxy, "meanwhile")[0][-1]["type"] == "response.completed"
        finally:
            ws.socket.shutdown(socket.SHUT_RDWR)  # gone mid-frame: no close handshake to wait for
    assert ws_turns(w.proxy, "after")[0][-1]["type"] == "response.completed" and all_usable(w)


# --- upstream's stream -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["event", "line"])
def test_an_enormous_sse_event_passes_through_and_the_turn_is_recorded_unparsed(shared, shape):
    """An event (or a line that never ends) past the tap's 8 MiB cap: every byte reaches the client,
    the tap skips it without buffering, and the turn — whose end the tap never saw — is recorded
    `unparsed` instead of cooling the account as an incomplete stream."""
    w = shared.fresh(["alice"])
    w.fault("huge_event", shape=shape, bytes=12 << 20)
    r = turn(w.proxy, f"huge-{shape}")
    assert r.status_code == 200
    [seen] = [s for s in w.backend.requests() if s["path"].startswith(RESPONSES)]
    assert len(r.content) > 12 << 20
    assert hashlib.sha256(r.content).hexdigest() == seen["response_sha256"]  # untouched
    if shape == "event":
        assert len(completed_event(r.text)["padding"]) > 12_000_000
    assert all_usable(w)  # not cooled: stream_incomplete would have been
    wait_for(lambda: ledger_outcomes(shared, w["alice"]) == ["unparsed"], 10, "the turn in the ledger as unparsed")
    assert turn(w.proxy, "after").status_code == 200 and served_by(w.backend)[-1] == w["alice"]


# --- settings --------------------------------------------------------------------------------------


WRONG_TYPES = [
    ("policy: [round_robin, fill_first]\n", r"policy: \['round_robin', 'fill_first'\] is not a policy"),
    ('max_attempts: "three"\n', r"max_attempts: expected a whole number, got 'three'"),
    ("pool_scan_seconds: [0.2]\n", r"pool_scan_seconds: expected a number, got \[0\.2\]"),
    ("prices: 5\n", r"prices: expected a mapping of model"),
    ("admin_token: {a: 1}\n", r"admin_token: expected a non-empty string, got \{'a': 1\}"),
]


def test_a_config_edit_of_the_wrong_type_keeps_the_previous_settings(start, tmp_path):
    """test_proxy.py covers a value out of range; here each edit has the wrong type (and one file is
    not a mapping at all): each is named in the log, and the proxy keeps serving on its settings."""
    base = "pool_dir: pool\ndata_dir: data\npool_scan_seconds: 0.2\n"
    backend, proxy = start(["alice", "bob"], config=base + "policy: fill_first\n")
    edits = [(base + edit, message) for edit, message in WRONG_TYPES]
    edits.append(("- just\n- a list\n", r"the file must be a mapping of key: value, got list"))
    for i, (text, message) in enumerate(edits):
        mark = len(proxy.lines)
        (tmp_path / "mitm.yaml").write_text(text + f"# edit {i}\n")  # each edit a new size: surely seen
        proxy.wait_for(message + r".*keeping the previous settings until the file is fixed", 6, start=mark)
        backend.clear_requests()
        for n in range(3):
            assert turn(proxy, f"c{i}-{n}").status_code == 200
        assert set(served_by(backend)) == {"alice"}  # still fill_first
