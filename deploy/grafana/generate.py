"""Generate Dialtone's Grafana dashboard, kept as code with the Grafana Foundation SDK.

    uv run python deploy/grafana/generate.py          # writes deploy/grafana/dashboards/dialtone.json

The JSON is checked in (Grafana provisions it from ``deploy/grafana/provisioning``); a test fails
when it differs from what this script writes, so edit this file and run it, never the JSON.
Every query uses fixed windows (no Grafana variables), so ``deploy/tests/test_dashboard.py`` can
run each one as it stands against a real Prometheus scraping the five services.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "dialtone.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")  # provisioning/datasources/prometheus.yml
SERVICES = "media-gateway|realtime-bridge|tool-runner|transcript-writer|admin-api"
DESCRIPTION = "Dialtone's five services as Prometheus scrapes them (job = service name)."


def _q(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)


def _series(title: str, unit: str, description: str, *queries: tuple[str, str], width: int = 12):
    panel = (
        timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
        .unit(unit).min(0).height(8).span(width)
    )  # fmt: skip
    for i, (expr, legend) in enumerate(queries):
        panel.with_target(_q(expr, legend, chr(ord("A") + i)))
    return panel


def _stat(title: str, unit: str, description: str, expr: str, width: int = 6):
    return (
        stat.Panel().title(title).description(description).datasource(DATASOURCE)
        .unit(unit).height(4).span(width).with_target(_q(expr, title, "A"))
    )  # fmt: skip


def _quantiles(metric: str, by: str = "") -> list[tuple[str, str]]:
    group = f"le{', ' + by if by else ''}"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[5m])))", f"{prefix}p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]


def build() -> dict:
    d = (
        dash.Dashboard("Dialtone").uid("dialtone").description(DESCRIPTION).tags(["dialtone"])
        .time("now-6h", "now").refresh("30s").timezone("browser").editable()
    )  # fmt: skip

    d.with_row(dash.Row("Calls"))
    d.with_panel(_stat("Calls now", "short", "Calls the bridges are serving.",
                       "sum(dialtone_bridge_calls_active)"))  # fmt: skip
    d.with_panel(_stat("Calls started, last hour", "short", "Calls the bridges started serving.",
                       "sum(increase(dialtone_bridge_calls_started_total[1h]))"))  # fmt: skip
    d.with_panel(_stat("Bridges ready", "short", "Bridges that report ready (0 pages: DialtoneNoBridgeReady).",
                       "sum(dialtone_bridge_ready)"))  # fmt: skip
    d.with_panel(_stat("Refused handshakes, last hour", "short",
                       "Media WebSocket upgrades the gateway answered 403 (bad signature, foreign call...).",
                       'sum(increase(dialtone_gateway_websocket_handshakes_total{code="403"}[1h]))'))  # fmt: skip
    d.with_panel(_series(
        "Calls by agent and direction", "short", "Active calls per agent and direction.",
        ("sum by (agent, direction) (dialtone_bridge_calls_active)", "{{agent}} {{direction}}"),
        ("sum by (agent, direction) (rate(dialtone_bridge_calls_started_total[5m])) * 60",
         "{{agent}} {{direction}} started/min"),
    ))  # fmt: skip
    d.with_panel(_series(
        "Calls ended by reason and outcome", "short", "Calls ended per minute.",
        ("sum by (reason, outcome) (rate(dialtone_bridge_calls_ended_total[5m])) * 60", "{{reason}} {{outcome}}"),
    ))  # fmt: skip

    d.with_row(dash.Row("Latency"))
    d.with_panel(_series(
        "Turn latency, sent", "s",
        "The model's speech_stopped to the first audio of the reply sent towards Twilio (alert: p95 > 1.5 s).",
        *_quantiles("dialtone_bridge_turn_latency_seconds"), width=8,
    ))  # fmt: skip
    d.with_panel(_series(
        "Turn latency, heard", "s", "The same turn to the first audio the caller heard (its mark echoed back).",
        *_quantiles("dialtone_bridge_turn_heard_latency_seconds"), width=8,
    ))  # fmt: skip
    d.with_panel(_series(
        "Greeting latency", "s", "Stream start to the first audio of the greeting.",
        *_quantiles("dialtone_bridge_greeting_latency_seconds"), width=8,
    ))  # fmt: skip
    d.with_panel(_series(
        "Barge-ins", "short", "Caller interruptions that cut agent audio, per minute.",
        ("sum(rate(dialtone_bridge_barge_ins_total[5m])) * 60", "barge-ins/min"),
        ("sum(rate(dialtone_bridge_truncates_refused_total[5m])) * 60", "truncates refused/min"),
    ))  # fmt: skip
    d.with_panel(_series(
        "Bus transit", "s",
        "A frame's time on NATS, from the sender's clock stamp in its header to its arrival: caller audio "
        "gateway -> bridge, agent audio and control bridge -> gateway.",
        *[(expr, f"{name} {legend}") for metric, name in (("dialtone_bridge_bus_transit_seconds", "to bridge"),
                                                          ("dialtone_gateway_bus_transit_seconds", "to gateway"))
          for expr, legend in _quantiles(metric) if not legend.endswith("p95")],
    ))  # fmt: skip

    d.with_row(dash.Row("First words and deploys"))
    d.with_panel(_series(
        "Model sessions opened ahead of the call", "short",
        "Per minute: sessions opened at the voice webhook by what became of them (used, failed, expired, unused), "
        "and warm Realtime sockets (REALTIME_WARM_SOCKETS) by result, with those ready now.",
        ("sum by (result) (rate(dialtone_bridge_prepared_sessions_total[5m])) * 60", "prepared {{result}}/min"),
        ("sum by (result) (rate(dialtone_bridge_warm_sockets_total[5m])) * 60", "warm {{result}}/min"),
        ("sum(dialtone_bridge_warm_sockets_ready)", "warm ready"),
        width=8,
    ))  # fmt: skip
    d.with_panel(_series(
        "Calls moved by draining gateways", "short",
        "Per minute, by result: moved to another gateway, or kept (REST update refused, no new stream, no other "
        "gateway ready...), and moves whose caller heard a gap over 1 s. A deploy that moves calls shows here.",
        ("sum by (result) (rate(dialtone_gateway_moves_total[5m])) * 60", "{{result}}/min"),
        ('(sum(rate(dialtone_gateway_move_gap_seconds_count[5m])) - sum(rate(dialtone_gateway_move_gap_seconds_bucket{le="1.0"}[5m]))) * 60',
         "gap > 1 s/min"),
        width=16,
    ))  # fmt: skip

    d.with_row(dash.Row("Tools"))
    d.with_panel(_series(
        "Tool latency", "s", "Tool call duration in the tool-runner (queueing included), by tool.",
        *_quantiles("dialtone_tool_duration_seconds", "tool")[1:],
    ))  # fmt: skip
    d.with_panel(_series(
        "Tool calls by result", "short",
        "Tool calls per minute by tool and result (ok, error, timeout, invalid, unknown); anything but ok is an error.",
        ("sum by (tool, result) (rate(dialtone_tool_calls_total[5m])) * 60", "{{tool}} {{result}}"),
        ("sum(dialtone_tool_calls_queued)", "queued"),
    ))  # fmt: skip

    d.with_row(dash.Row("OpenAI Realtime"))
    d.with_panel(_series(
        "Realtime errors", "short", "Realtime error events per minute, by code.",
        ("sum by (code) (rate(dialtone_bridge_realtime_errors_total[5m])) * 60", "{{code}}"),
    ))  # fmt: skip
    d.with_panel(_series(
        "Realtime cost per hour", "currencyUSD", "Model cost in dollars per hour at the configured prices, by token kind.",
        ("sum by (kind) (rate(dialtone_bridge_realtime_cost_dollars_total[5m])) * 3600", "{{kind}}"),
    ))  # fmt: skip

    d.with_row(dash.Row("Transcript writer"))
    d.with_panel(_series(
        "Writer lag", "s", "An event's time to the commit of its batch.",
        *_quantiles("dialtone_writer_lag_seconds"),
    ))  # fmt: skip
    d.with_panel(_series(
        "Writer backlog", "short", "Events in the stream not yet delivered to the writer, and events written per second.",
        ("max(dialtone_writer_consumer_pending)", "pending"),  # one shared consumer, seen by every writer
        ("sum(rate(dialtone_writer_events_written_total[5m]))", "written/s"),
    ))  # fmt: skip

    d.with_row(dash.Row("Webhooks"))
    d.with_panel(_series(
        "Webhook deliveries", "short",
        "Deliveries finished per minute, by result (delivered, dead), and failed attempts per minute, by reason.",
        ("sum by (result) (rate(dialtone_writer_webhook_deliveries_total[5m])) * 60", "{{result}}/min"),
        ("sum by (reason) (rate(dialtone_writer_webhook_failures_total[5m])) * 60", "failed {{reason}}/min"),
        width=8,
    ))  # fmt: skip
    d.with_panel(_series(
        "Webhook backlog", "short", "Deliveries not yet delivered nor dead: first tries and retries to come.",
        ("max(dialtone_writer_webhook_backlog)", "undelivered"),  # every writer reports the same table
        width=8,
    ))  # fmt: skip
    d.with_panel(_series(
        "Oldest undelivered webhook", "s", "How long the oldest undelivered delivery has waited (0 with none).",
        ("max(dialtone_writer_webhook_oldest_undelivered_age_seconds)", "age"),
        width=8,
    ))  # fmt: skip

    d.with_row(dash.Row("Services"))
    d.with_panel(_series(
        "CPU per service", "percentunit", "CPU time per second, per service.",
        (f'sum by (job) (rate(process_cpu_seconds_total{{job=~"{SERVICES}"}}[5m]))', "{{job}}"),
    ))  # fmt: skip
    d.with_panel(_series(
        "Memory per service", "bytes", "Resident memory, per service.",
        (f'sum by (job) (process_resident_memory_bytes{{job=~"{SERVICES}"}})', "{{job}}"),
    ))  # fmt: skip
    d.with_panel(_series(
        "Refused handshakes", "short",
        "Media WebSocket upgrades per minute by answer (101 accepted, 403 refused), and refusals by reason.",
        ("sum by (code) (rate(dialtone_gateway_websocket_handshakes_total[5m])) * 60", "{{code}}"),
        ("sum by (reason) (rate(dialtone_gateway_sockets_refused_total[5m])) * 60", "refused {{reason}}"),
    ))  # fmt: skip
    return json.loads(json.dumps(d.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
