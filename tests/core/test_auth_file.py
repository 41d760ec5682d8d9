import json
import time
from pathlib import Path

import pytest

from codex_pool.core.auth_file import AuthFileError, parse_auth
from tests.support.tokens import make_auth, make_jwt

P = Path("/pool/alice.json")


def parse(doc):
    return parse_auth(json.dumps(doc).encode() if not isinstance(doc, bytes) else doc, P)


def test_snake_case_file_gives_identity_and_expiry():
    exp = int(time.time()) + 5000
    a = parse(make_auth("acct-A", "a@example.com", "pro", exp=exp))
    assert (a.name, a.account_id, a.email, a.plan, a.key_style) == ("alice", "acct-A", "a@example.com", "pro", "snake")
    assert a.access_expires_at == exp
    assert a.refresh_token == "rt_test_refresh_token_1"
    assert a.last_refresh is not None and a.last_refresh.year == 2026


def test_camel_case_file_is_accepted_and_remembered():
    a = parse(make_auth("acct-C", style="camel"))
    assert a.account_id == "acct-C" and a.key_style == "camel"


def test_account_id_falls_back_to_id_token_claim():
    a = parse(make_auth("acct-from-claim", include_account_id=False))
    assert a.account_id == "acct-from-claim"


def test_email_from_profile_claim():
    doc = make_auth()
    doc["tokens"]["id_token"] = make_jwt(
        {"https://api.openai.com/profile": {"email": "p@example.com"}, "https://api.openai.com/auth": {"chatgpt_account_id": "x"}}
    )
    assert parse(doc).email == "p@example.com"


def test_tokens_never_in_repr():
    a = parse(make_auth())
    text = repr(a)
    assert a.access_token not in text and a.id_token not in text and "rt_test" not in text


def _without(key):
    doc = make_auth()
    del doc["tokens"][key]
    return doc


def _with_token(key, value):
    doc = make_auth()
    doc["tokens"][key] = value
    return doc


def _no_account_id():
    doc = make_auth(include_account_id=False)
    doc["tokens"]["id_token"] = make_jwt({"email": "x@example.com"})
    return doc


BAD = [
    ("not json", b"{not json", "not valid JSON (line 1 column 2"),
    ("empty file", b"", "not valid JSON"),
    ("not utf-8", b"\xff\xfe{}", "not"),
    ("json array", [1, 2], "not a JSON object"),
    ("no tokens", {"auth_mode": "chatgpt"}, 'no "tokens" object'),
    ("api key file", {"OPENAI_API_KEY": "sk-test"}, "API key, not a ChatGPT sign-in"),
    ("tokens not object", {"tokens": "abc"}, '"tokens" is not an object'),
    ("missing access token", _without("access_token"), "tokens.access_token missing"),
    ("missing id token", _without("id_token"), "tokens.id_token missing"),
    ("access token empty", _with_token("access_token", ""), "tokens.access_token is not a non-empty string"),
    ("access token number", _with_token("access_token", 42), "not a non-empty string"),
    ("id token garbage", _with_token("id_token", "abc.def"), "tokens.id_token: undecodable JWT"),
    ("access token garbage", _with_token("access_token", "not-a-jwt"), "tokens.access_token: undecodable JWT"),
    ("no account id", _no_account_id(), "no account id"),
]


@pytest.mark.parametrize("label,doc,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_files_are_rejected_with_reason_and_fix(label, doc, expected):
    with pytest.raises(AuthFileError) as e:
        parse(doc)
    message = str(e.value)
    assert expected in message
    assert "codex login" in message  # every reason says what to do
