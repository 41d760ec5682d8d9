import pytest
from hypothesis import given
from hypothesis import strategies as st

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


@given(st.text(alphabet=st.sampled_from(list("eyJrt_tokenBEARERabc.:= \"'-0123456789")), max_size=80))
def test_the_fast_path_never_skips_what_a_full_scan_would_redact(text):
    from codex_pool.core import redact as mod

    full = mod._KEYED.sub(r"\1[redacted]", mod._REFRESH.sub("[redacted-refresh-token]",
                          mod._BEARER.sub(r"\1[redacted]", mod._JWT.sub("[redacted-jwt]", text))))
    assert redact(text) == full


def test_the_first_byte_shortcut_never_skips_a_credential_name():
    from codex_pool.core.redact import CANNOT_BE_CREDENTIAL, CLIENT_CREDENTIAL_HEADERS

    for name in CLIENT_CREDENTIAL_HEADERS:
        for variant in (name, name.upper(), name.title(), name.replace("-", "_"), " " + name):
            raw = variant.encode()
            assert is_client_credential(raw)
            assert raw[:1] not in CANNOT_BE_CREDENTIAL, variant
    assert b"u" in CANNOT_BE_CREDENTIAL and b"H" in CANNOT_BE_CREDENTIAL  # user-agent, Host: skipped cheaply


def test_client_keys_are_redacted():
    from codex_pool.core.redact import redact
    key = "cp-" + "A1b2_-" * 8
    assert key not in redact(f"refused {key} here") and "[redacted-client-key]" in redact(f"x {key}")
