"""What Twilio sees of the gateway over HTTP: TwiML, signature checks and the stream URL."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import pytest
from dialtone_gateway.settings import GatewaySettings
from dialtone_gateway.signatures import SignatureChecker
from dialtone_gateway.twiml import connect_stream
from twilio.request_validator import RequestValidator

pytestmark = pytest.mark.unit

TOKEN = "0123456789abcdef0123456789abcdef"
BASE = "https://gateway.example.com"
STREAM_URL = "wss://gateway.example.com/media"
CALL = "CA" + "1" * 32
FORM = {
    "CallSid": CALL,
    "AccountSid": "AC" + "2" * 32,
    "From": "+15550001",
    "To": "+15005550006",
    "CallStatus": "ringing",
    "Direction": "inbound",
}


def _sign(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


@pytest.fixture
def checker() -> SignatureChecker:
    return SignatureChecker(TOKEN, BASE + "/", STREAM_URL)


# ---- TwiML ---------------------------------------------------------------------------------


def test_twiml_connects_the_call_to_its_own_stream_url_and_nothing_else() -> None:
    url = f"{STREAM_URL}/{CALL}/{'t' * 22}"
    root = ET.fromstring(connect_stream(url))

    assert root.tag == "Response"
    assert [child.tag for child in root] == ["Connect"]
    (stream,) = root.findall("./Connect/Stream")
    assert stream.get("url") == url
    # The call's details stay server-side: nothing a socket could echo back as its own.
    assert stream.findall("Parameter") == []
    assert urlsplit(url).query == ""


# ---- signatures ----------------------------------------------------------------------------


def test_webhook_signed_by_twilio_is_accepted(checker: SignatureChecker) -> None:
    assert checker.webhook("/twilio-voice", FORM, _sign(BASE + "/twilio-voice", FORM))


def test_webhook_with_a_query_string_is_signed_with_it(checker: SignatureChecker) -> None:
    path = "/twilio-voice?agent=billing&v_order=42"

    assert checker.webhook(path, FORM, _sign(BASE + path, FORM))
    assert not checker.webhook("/twilio-voice", FORM, _sign(BASE + path, FORM))


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(_sign(BASE + "/twilio-voice", FORM, token="another-token"), id="other-token"),
        pytest.param(_sign("https://evil.example.com/twilio-voice", FORM), id="other-host"),
        pytest.param(_sign("http://gateway.example.com/twilio-voice", FORM), id="other-scheme"),
        pytest.param(_sign(BASE + "/twilio-status", FORM), id="other-path"),
        pytest.param(_sign(BASE + "/twilio-voice", FORM | {"To": "+19999999999"}), id="other-params"),
        pytest.param(_sign(BASE + "/twilio-voice", {}), id="no-params"),
        pytest.param("", id="empty"),
        pytest.param(None, id="missing"),
        pytest.param("garbage", id="garbage"),
    ],
)
def test_webhook_with_a_wrong_signature_is_refused(checker: SignatureChecker, signature: str | None) -> None:
    assert not checker.webhook("/twilio-voice", FORM, signature)


def test_webhook_with_tampered_form_is_refused(checker: SignatureChecker) -> None:
    signature = _sign(BASE + "/twilio-voice", FORM)

    assert not checker.webhook("/twilio-voice", FORM | {"From": "+15559999"}, signature)


NOW = 1_800_000_000
TTL = 300.0


def test_media_socket_signed_for_its_own_stream_url_is_accepted(checker: SignatureChecker) -> None:
    path = checker.stream_path(CALL, NOW)
    call, issued, token = path.split("/")

    assert (call, issued) == (CALL, str(NOW))
    assert checker.media_socket(path, _sign(f"{STREAM_URL}/{path}", {}))
    assert checker.token_matches(CALL, issued, token, now=NOW + 5, ttl_s=TTL)


def test_each_call_has_its_own_token_and_so_its_own_upgrade_signature(checker: SignatureChecker) -> None:
    other = "CA" + "9" * 32
    mine, theirs = checker.stream_token(CALL, NOW), checker.stream_token(other, NOW)

    assert mine != theirs and len(mine) >= 22
    assert not checker.token_matches(other, str(NOW), mine, now=NOW, ttl_s=TTL)
    # A signature seen on one call's upgrade does not open another call's stream.
    assert not checker.media_socket(checker.stream_path(other, NOW), _sign(f"{STREAM_URL}/{CALL}/{NOW}/{mine}", {}))
    # Another auth token gives other tokens: the key is derived from the secret.
    assert SignatureChecker("another-token", BASE, STREAM_URL).stream_token(CALL, NOW) != mine


def test_a_stream_url_expires(checker: SignatureChecker) -> None:
    token = checker.stream_token(CALL, NOW)

    assert checker.token_matches(CALL, str(NOW), token, now=NOW + TTL, ttl_s=TTL)
    assert not checker.token_matches(CALL, str(NOW), token, now=NOW + TTL + 1, ttl_s=TTL)  # a replay, later
    assert not checker.token_matches(CALL, str(NOW), token, now=NOW - 60, ttl_s=TTL)  # issued in the future
    # The issue time is signed: moving it forward does not renew the URL.
    assert not checker.token_matches(CALL, str(NOW + 3600), token, now=NOW + 3600, ttl_s=TTL)


def test_a_move_url_opens_only_its_own_move(checker: SignatureChecker) -> None:
    move, other = "m" * 22, "n" * 22
    call, issued, move_id, token = checker.stream_path(CALL, NOW, move).split("/")
    assert (call, issued, move_id) == (CALL, str(NOW), move)
    assert checker.token_matches(CALL, issued, token, now=NOW, ttl_s=TTL, move_id=move)
    assert not checker.token_matches(CALL, issued, token, now=NOW, ttl_s=TTL)  # not as the webhook's URL
    assert not checker.token_matches(CALL, issued, token, now=NOW, ttl_s=TTL, move_id=other)
    plain = checker.stream_token(CALL, NOW)  # the webhook's token does not open a move
    assert not checker.token_matches(CALL, issued, plain, now=NOW, ttl_s=TTL, move_id=move)
    assert not checker.token_matches(CALL, issued, token, now=NOW, ttl_s=TTL, move_id="../" * 8)


@pytest.mark.parametrize("token", ["", "short", "x" * 22, "A" * 200, "../../etc", "t\n" * 11])
def test_forged_tokens_do_not_match(checker: SignatureChecker, token: str) -> None:
    assert not checker.token_matches(CALL, str(NOW), token, now=NOW, ttl_s=TTL)


@pytest.mark.parametrize("issued", ["", "-1", "1e9", "9" * 40, " 1800000000"])
def test_malformed_issue_times_do_not_match(checker: SignatureChecker, issued: str) -> None:
    assert not checker.token_matches(CALL, issued, checker.stream_token(CALL, NOW), now=NOW, ttl_s=TTL)


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(_sign("wss://evil.example.com/media", {}), id="other-host"),
        pytest.param(_sign(STREAM_URL, {}), id="the-bare-stream-url"),
        pytest.param(_sign(BASE + "/twilio-voice", {}), id="webhook-url"),
        pytest.param("", id="empty"),
        pytest.param(None, id="missing"),
    ],
)
def test_media_socket_with_a_wrong_signature_is_refused(checker: SignatureChecker, signature: str | None) -> None:
    assert not checker.media_socket(checker.stream_path(CALL, NOW), signature)


def test_signature_is_checked_against_the_configured_url_not_the_local_one() -> None:
    # Behind a TLS terminator the server sees http://127.0.0.1:8000; Twilio signed the public URL.
    checker = SignatureChecker(TOKEN, "https://gateway.example.com", STREAM_URL)

    assert checker.webhook("/twilio-voice", FORM, _sign("https://gateway.example.com/twilio-voice", FORM))
    assert not checker.webhook("/twilio-voice", FORM, _sign("http://127.0.0.1:8000/twilio-voice", FORM))


# ---- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "stream"),
    [
        ("https://gateway.example.com", "wss://gateway.example.com/media"),
        ("https://gateway.example.com/", "wss://gateway.example.com/media"),
        ("https://abc.ngrok.app/dialtone", "wss://abc.ngrok.app/dialtone/media"),
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/media"),
        ("http://localhost:8000/", "ws://localhost:8000/media"),
    ],
)
def test_stream_url_follows_the_public_base_url(base: str, stream: str) -> None:
    settings = GatewaySettings(twilio_auth_token="t", public_base_url=base)
    assert settings.stream_base_url == stream
    assert settings.stream_url(f"{CALL}/1/tok") == f"{stream}/{CALL}/1/tok"


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "from-env")
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://voice.example.org")
    monkeypatch.setenv("GATEWAY_PORT", "8123")
    settings = GatewaySettings()

    assert settings.twilio_auth_token.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)
    assert settings.stream_base_url == "wss://voice.example.org/media"
    assert settings.port == 8123
