"""The bench's figure maths and its exit code: frames matched by the tags carried in the audio,
latency and loss per direction, percentiles, and the verdict that fails ``make bench``."""

from __future__ import annotations

import base64
import math

import orjson
import pytest
from dialtone_dev.bench import Figures, report
from dialtone_dev.bench_figures import (
    FRAME_BYTES,
    GRACE_S,
    Verdict,
    inbound_frames,
    inbound_latency,
    outbound_latency,
    pct,
    read_tag,
    tag_frame,
)  # fmt: skip
from dialtone_dev.bench_load import QUIET_S, CallResult, _Call
from dialtone_dev.bench_run import Pinning, RunResult, Usage
from dialtone_dev.bench_sims import SessionRecord, SimReport
from dialtone_sim.audio import energy

pytestmark = pytest.mark.unit

SPEECH = bytes([0x10]) * FRAME_BYTES  # loud, untagged


def test_a_tag_is_silence_and_reads_back() -> None:
    frame = tag_frame(299, 123_456)
    assert len(frame) == FRAME_BYTES and energy(frame) == 0  # the model's VAD hears silence
    assert read_tag(frame) == (299, 123_456)
    assert read_tag(SPEECH) is None
    assert read_tag(bytes([0xFF]) * FRAME_BYTES) is None  # plain silence carries no tag


def test_speech_frames_are_numbered_from_the_last_tag() -> None:
    # Frames 0-1 silent (tagged), 2-3 speech, 4 silent; delivered in two appends.
    audio = tag_frame(7, 0) + tag_frame(7, 1) + SPEECH + SPEECH + tag_frame(7, 4)
    call, frames = inbound_frames(audio, [(10.0, 3 * FRAME_BYTES), (10.5, 5 * FRAME_BYTES)])
    assert call == 7
    assert frames == [(0, 10.0), (1, 10.0), (2, 10.0), (3, 10.5), (4, 10.5)]


def test_inbound_latency_and_loss() -> None:
    sent = [1.0, 1.02, 1.04, 1.06, 9.5]  # the last one within the grace before the hang-up
    received = [(0, 1.003), (1, 1.025), (3, 1.07)]  # frame 2 never arrived
    latencies, lost = inbound_latency(sent, received, hung_up_at=10.0)
    assert [round(x, 3) for x in latencies] == [3.0, 5.0, 10.0]
    assert lost == 1  # frame 2; frame 4 may still be on its way
    latencies, _ = inbound_latency(sent, received, hung_up_at=10.0, since=1.01)
    assert len(latencies) == 2  # set-up frames are left out of the latency, never out of the loss


def test_outbound_latency_matches_bytes_not_messages() -> None:
    # The model sends 400 bytes in one piece; the platform delivers them as two messages.
    model = [(5.0, 2 * FRAME_BYTES + 80)]
    caller = [(5.004, FRAME_BYTES), (5.010, FRAME_BYTES + 80)]
    latencies, lost = outbound_latency(model, caller, hung_up_at=20.0)
    assert [round(x, 3) for x in latencies] == [4.0, 10.0, 10.0]
    assert lost == 0
    latencies, lost = outbound_latency(model + [(6.0, FRAME_BYTES)], caller, hung_up_at=20.0)
    assert lost == 1  # 20 ms the caller never got
    _, lost = outbound_latency(model + [(20.0 - GRACE_S / 2, FRAME_BYTES)], caller, hung_up_at=20.0)
    assert lost == 0  # still on its way at the hang-up


def test_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pct(values, 50) == 50 and pct(values, 99) == 99 and pct(values, 100) == 100
    assert math.isnan(pct([], 50))


@pytest.mark.parametrize(
    ("verdict", "code"),
    [
        (Verdict(calls=3), 0),
        (Verdict(calls=3, failed_calls=["CA1: no reply"]), 1),
        (Verdict(calls=3, lost_in=1), 1),
        (Verdict(calls=3, lost_out=2), 1),
        (Verdict(calls=3, sim_errors=["realtime violation: ..."]), 1),
        (Verdict(calls=3, leaked_sockets=1), 1),
    ],
)
def test_the_exit_code_fails_on_failed_work(verdict: Verdict, code: int) -> None:
    assert verdict.exit_code == code


def _run(*, error: str | None = None, lost_frame: bool = False, sim_errors: list[str] | None = None) -> RunResult:
    sent = [100.0 + 0.02 * n for n in range(5)]
    call = CallResult(index=0, call_sid="CA0", webhook_at=99.0, stream_at=99.5, first_audio_at=99.9,
                      hung_up_at=110.0, sent_times=sent, received=[(100.2, 320)], error=error)  # fmt: skip
    frames = [(n, t + 0.002) for n, t in enumerate(sent) if not (lost_frame and n == 2)]
    session = SessionRecord(0, 0, frames, [(100.198, 320)], still_open=False)
    return RunResult("platform", [call], [], SimReport([session], sim_errors or []),
                     {"media-gateway": Usage(0.5, 70, 71)}, {"model simulator": 0.1, "load generator": 0.1},
                     12.0, 0)  # fmt: skip


@pytest.mark.parametrize(
    ("run", "code"),
    [
        (_run(), 0),
        (_run(error="the gateway closed the stream before the caller hung up"), 1),
        (_run(lost_frame=True), 1),
        (_run(sim_errors=["realtime violation: session 0: ..."]), 1),
    ],
)
def test_report_prints_the_figures_and_returns_the_exit_code(run: RunResult, code: int) -> None:
    lines: list[str] = []
    assert report("realtime", 1, Pinning([0], [1]), [run], out=lines.append) == code
    text = "\n".join(lines)
    assert "caller -> model" in text and "model -> caller" in text and "first agent audio" in text
    assert "received_ms" in text and "n/a" in text  # the turns carry no received_ms here
    assert ("FAILED" in text) == bool(code)


def test_figures_of_a_clean_run() -> None:
    from dialtone_dev.bench import figures

    f: Figures = figures(_run())
    assert [round(x, 1) for x in f.inbound] == [2.0] * 5
    assert [round(x, 1) for x in f.outbound] == [2.0, 2.0]
    assert f.lost_in == f.lost_out == 0
    assert [round(x) for x in f.first_words] == [900]


# ---- the load generator's caller ------------------------------------------------------------------
def _media(call: _Call, size: int, sid: str | None = None) -> str:
    stream_sid = sid or call.stream_sid
    return orjson.dumps({"event": "media", "streamSid": stream_sid,
                         "media": {"payload": base64.b64encode(b"\x10" * size).decode()}}).decode()  # fmt: skip


def test_the_caller_checks_the_gateway_as_twilio_does() -> None:
    call = _Call(0, [["x"]])
    assert call.on_message(_media(call, 320), 1.0) == []
    assert call.r.protocol_errors == [] and call.r.first_audio_at == 1.0
    call.on_message(_media(call, 160), 1.1)  # 20 ms: stutters on a real line
    call.on_message(_media(call, 320, sid="MZother"), 1.2)
    call.on_message('{"event": "media", "streamSid": "' + call.stream_sid + '", "media": {"payload": "***"}}', 1.3)
    call.on_message('{"event": "speak"}', 1.4)
    errors = "\n".join(call.r.protocol_errors)
    assert "< 40 ms" in errors and "wrong streamSid" in errors and "invalid payload" in errors
    assert "unknown event 'speak'" in errors


def test_the_caller_echoes_a_mark_once_the_audio_before_it_played() -> None:
    import orjson
    call = _Call(0, [["x"]])
    call.on_message(_media(call, 320), 1.0)
    mark = orjson.dumps({"event": "mark", "streamSid": call.stream_sid, "mark": {"name": "m1"}}).decode()
    assert call.on_message(mark, 1.0) == []  # 40 ms still to play
    assert not any('"mark"' in m for m in call.tick(1.02))
    echoed = [m for m in call.tick(1.04) if '"mark"' in m]
    assert len(echoed) == 1 and '"m1"' in echoed[0] and call.r.marks_echoed == 1


def test_the_caller_speaks_after_the_greeting_went_quiet_and_times_its_turn() -> None:
    call = _Call(3, [["c3BlZWNo", "c3BlZWNo"]])  # two frames of "speech"
    call.deadline = 100.0
    call.on_message(_media(call, 320), 1.0)
    call.tick(1.02)
    call.tick(1.04)  # greeting played out
    call.tick(1.0 + QUIET_S + 0.01)
    assert call.state == "speaking"
    sent = [call.tick(2.0 + 0.02 * n)[0] for n in range(3)]
    assert '"payload":"c3BlZWNo"' in sent[0] and '"payload":"c3BlZWNo"' in sent[1]
    assert call.state == "listening" and call.r.stops == [2.02]
    assert read_tag(base64.b64decode(sent[2].split('"payload":"')[1].split('"')[0])) == (3, 5)


def test_pinning_apart_and_its_clear_fallback_on_one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    pin = Pinning.choose()
    assert (pin.platform, pin.load) == ([0], [1])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert Pinning.choose().load == [1, 2, 3]  # the platform keeps one core
    assert "platform (services, NATS, PostgreSQL) on CPU [0]" in pin.describe()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    pin = Pinning.choose()
    assert pin.platform is None and pin.load is None
    assert pin.describe().startswith("NOT pinned (1 core)") and "not comparable with the targets" in pin.describe()


def test_a_lagging_load_generator_or_a_busy_machine_is_called_out() -> None:
    run = _run()
    lines: list[str] = []
    report("realtime", 1, Pinning([0], [1]), [run], out=lines.append)
    assert not any("WARNING" in line for line in lines)
    run.late_ms = [1.0] * 98 + [250.0, 300.0]
    run.core_busy = {0: 0.95, 1: 0.9}  # the bench's own processes used 0.7 s of 12 s
    lines = []
    assert report("realtime", 1, Pinning([0], [1]), [run], out=lines.append) == 0  # a warning, not a failure
    warnings = [line for line in lines if "WARNING" in line]
    assert any("clock ran 250 ms late" in w for w in warnings)
    assert any("other programs used" in w for w in warnings)


@pytest.mark.parametrize(
    ("engine", "env", "shown"),
    [
        ("realtime", {}, "not measured: no pool; run with --env REALTIME_WARM_SOCKETS=1"),
        ("live", {"REALTIME_WARM_SOCKETS": "4"}, "not measured: the pool is Realtime's"),
        ("realtime", {"REALTIME_WARM_SOCKETS": "4"}, "400.00 ms   (goal <= 300)  NOT met"),
    ],
)
def test_the_warm_pool_target_is_judged_only_on_a_run_with_a_pool(engine: str, env: dict[str, str], shown: str) -> None:
    lines: list[str] = []
    report(engine, 1, Pinning([0], [1]), [_run()], out=lines.append, env=env)
    (line,) = [x for x in lines if "with a warm pool" in x]
    assert line.rstrip().endswith(shown)
