import pytest

from codex_pool.core.redact import is_client_credential, redact
from tests.support.tokens import make_jwt


def test_redact_removes_tokens():
    jwt_ = make_jwt({"sub": "x"})
    text = f"Authorization: Bearer {jwt_} refresh=rt_abcdefghijkl {{'access_token': 'opaque123'}}"
    out = redact(text)
    assert jwt_ not in out and "rt_abcdefghijkl" not in out and "opaque123" not in out


@pytest.mark.parametrize(
    "name,expected",
    [("Authorization", True), ("authorization", True), ("ChatGPT-Account-ID", True), ("chatgpt_account_id", True),
     ("CHATGPT-ACCOUNT-ID", True), ("Cookie", True), ("Proxy-Authorization", True), ("session-id", False), ("content-type", False)],
)
def test_client_credential_headers(name, expected):
    assert is_client_credential(name) is expected
