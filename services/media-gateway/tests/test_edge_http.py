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
FORM = {
    "CallSid": "CA" + "1" * 32,
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


def test_twiml_connects_a_stream_with_parameters() -> None:
    params = {"from": "+15550001", "to": "+15005550006", "agent": "support", "v_note": 'a&b<c>"d'}
    root = ET.fromstring(connect_stream(STREAM_URL, params))

    assert root.tag == "Response"
    assert [child.tag for child in root] == ["Connect"]
    streams = root.findall("./Connect/Stream")
    assert len(streams) == 1
    assert streams[0].get("url") == STREAM_URL
    assert {p.get("name"): p.get("value") for p in streams[0].findall("Parameter")} == params


def test_twiml_stream_url_has_no_query_string() -> None:
    root = ET.fromstring(connect_stream(STREAM_URL, {"agent": "billing", "v_id": "7"}))
    url = urlsplit(root.find("./Connect/Stream").get("url"))

    assert url.scheme == "wss"
    assert url.query == ""
    assert "?" not in root.find("./Connect/Stream").get("url")


def test_twiml_leaves_out_parameters_without_a_value() -> None:
    root = ET.fromstring(connect_stream(STREAM_URL, {"from": "+1555", "answered_by": None, "agent": None}))

    assert [p.get("name") for p in root.iter("Parameter")] == ["from"]


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


def test_media_socket_signed_for_the_stream_url_is_accepted(checker: SignatureChecker) -> None:
    assert checker.media_socket(_sign(STREAM_URL, {}))


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(_sign("wss://evil.example.com/media", {}), id="other-host"),
        pytest.param(_sign(STREAM_URL, {}, token="another-token"), id="other-token"),
        pytest.param(_sign(BASE + "/twilio-voice", {}), id="webhook-url"),
        pytest.param(_sign(STREAM_URL, FORM), id="with-params"),
        pytest.param("", id="empty"),
        pytest.param(None, id="missing"),
    ],
)
def test_media_socket_with_a_wrong_signature_is_refused(checker: SignatureChecker, signature: str | None) -> None:
    assert not checker.media_socket(signature)


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
    assert GatewaySettings(twilio_auth_token="t", public_base_url=base).stream_url == stream


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "from-env")
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://voice.example.org")
    monkeypatch.setenv("GATEWAY_PORT", "8123")
    settings = GatewaySettings()

    assert settings.twilio_auth_token.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)
    assert settings.stream_url == "wss://voice.example.org/media"
    assert settings.port == 8123
