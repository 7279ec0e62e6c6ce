"""``dialtone eval`` / ``make eval``: run every scenario of every agent, report pass rates.

Options (``make eval`` passes its variables of the same names): ``--runs`` (``RUNS``, calls per
scenario), ``--concurrency`` (``CONCURRENCY``, test calls at once per platform, default 4),
``--agent`` (``AGENT``), ``--engine realtime|live|both`` (``ENGINE``: every agent on that
engine, or on each side by side; unset, each agent's own), ``--junit PATH`` (``JUNIT``), ``--threshold`` (``THRESHOLD``: the
pass rate a scenario without its own ``pass_rate`` needs, default 1.0), ``--running`` (``RUNNING=1``:
on the platform ``make run`` started instead of one of its own).

Exit codes: 0 every scenario at or above its threshold; 1 one below; 2 a scenario file refused or
the command misused (nothing is run then).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from dialtone_dev.eval_report import summarize, table, write_junit
from dialtone_dev.eval_runner import Engine, EvalOptions, RunResult, run_scenarios, simulated
from dialtone_dev.eval_scenarios import load_scenarios
from dialtone_dev.settings import EvalSettings

PLUMBING_BANNER = "\n".join([
    "!" * 72,
    "!!  OPENAI_API_KEY is not set: Dialtone's Realtime and GPT-Live SIMULATORS answer, saying what",
    "!!  each scenario's `model` block scripts. This tests the PLUMBING (speech, gateway, bridge,",
    "!!  tools, mocks, transfers, writer), NOT your agent's prompt. Set OPENAI_API_KEY to test the model.",
    "!" * 72,
])  # fmt: skip


def parse(argv: list[str], settings: EvalSettings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dialtone eval", description="Test calls of your agents' scenarios.")
    parser.add_argument("--runs", type=int, default=settings.runs, help="calls per scenario (RUNS)")
    parser.add_argument("--concurrency", type=int, default=settings.concurrency,
                        help="test calls at once on each platform (CONCURRENCY; 1: one after another)")
    parser.add_argument("--agent", default=settings.agent, help="only this agent's scenarios (AGENT)")
    parser.add_argument("--scenario", default=None, help="only scenarios with this name")
    parser.add_argument("--engine", choices=["realtime", "live", "both"], default=settings.engine,
                        help="every agent on this engine, or on each (both) side by side (ENGINE; default: "
                             "each agent's own)")
    parser.add_argument("--junit", type=Path, default=settings.junit, help="write JUnit XML here (JUNIT)")
    parser.add_argument("--threshold", type=float, default=settings.threshold,
                        help="pass rate needed by scenarios without their own pass_rate (THRESHOLD; 1.0)")
    parser.add_argument("--running", action="store_true", default=settings.running,
                        help="call the platform `make run` started (RUNNING=1)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print each failed call's transcript")
    parser.add_argument("--agents-dir", type=Path, default=settings.agents_dir, help="AGENTS_DIR")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        parser.error("--threshold is a pass rate between 0 and 1")
    return args


async def evaluate(argv: list[str], settings: EvalSettings | None = None) -> int:
    """Run the command; its exit code (see the module docstring)."""
    settings = settings or EvalSettings()
    args = parse(argv, settings)
    if args.running and args.engine:
        print("dialtone eval: ENGINE needs a platform of the run's own (the running one serves each agent "
              "on its own engine)", file=sys.stderr)
        return 2
    scenarios, refused = load_scenarios(args.agents_dir, args.agent)
    if args.scenario:
        scenarios = [s for s in scenarios if s.name == args.scenario]
    if refused:
        print("scenario files refused:", file=sys.stderr)
        for error in refused:
            for problem in error.problems:
                print(f"  {problem}", file=sys.stderr)
        return 2
    if not scenarios:
        where = f"agent {args.agent!r}" if args.agent else str(args.agents_dir)
        print(f"no scenarios found for {where} (agents/<name>/scenarios/*.yaml)", file=sys.stderr)
        return 2
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    options = EvalOptions(
        agents_dir=args.agents_dir, runs=args.runs, agent=args.agent, concurrency=args.concurrency,
        threshold=args.threshold, running=args.running, openai_api_key=key,
        openai_base_url=settings.openai_base_url, eval_model=settings.eval_model,
        tts_voice=settings.eval_tts_voice, data_dir=settings.dialtone_data_dir,
    )  # fmt: skip
    if simulated(options):
        print(PLUMBING_BANNER, flush=True)
    total = len(scenarios) * args.runs
    print(f"running {len(scenarios)} scenario(s) x {args.runs} run(s) = {total} test call(s)"
          f" on {'the running platform' if args.running else 'a platform of their own'}", flush=True)

    def progress(result: RunResult) -> None:
        verdict = "pass" if result.passed else "FAIL"
        print(f"  {verdict}  {result.scenario} [{result.engine}] run {result.run}  ({result.seconds:.1f} s)"
              f"  {result.call_url or ''}", flush=True)
        if not result.passed and args.verbose:
            for line in result.transcript:
                print(f"        {line}", flush=True)
            print(f"        (ended: {result.end_reason})", flush=True)

    try:
        engines: list[Engine | None] = ["realtime", "live"] if args.engine == "both" else [args.engine]
        results = await run_scenarios(options, scenarios, engines, progress)
    except LookupError as exc:
        print(f"dialtone eval: {exc}", file=sys.stderr)
        return 2
    summaries = summarize(results, scenarios, args.threshold)
    print()
    print(table(results, summaries))
    if args.junit:
        write_junit(args.junit, results, summaries)
        print(f"\nJUnit XML written to {args.junit}")
    return 0 if all(s.ok for s in summaries) else 1


def main() -> None:
    sys.exit(asyncio.run(evaluate(sys.argv[1:])))
