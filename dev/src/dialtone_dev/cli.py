"""``dialtone run | call | eval | eval-worker | bench``: the developer commands behind the Makefile,
and the test worker of a deployment's Tests page (``eval-worker``)."""

from __future__ import annotations

import sys


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    sys.argv = [f"dialtone {command}", *sys.argv[2:]]
    if command == "run":
        from dialtone_dev.run import main as run
    elif command == "call":
        from dialtone_dev.call import main as run
    elif command == "bench":
        from dialtone_dev.bench import main as run
    elif command == "eval":
        from dialtone_dev.eval import main as run
    elif command == "eval-worker":
        from dialtone_dev.eval_service.main import main as run
    elif command == "bench-list":
        from dialtone_dev.bench_list import main as run
    else:
        print("usage: dialtone run | call | eval [--runs N --agent A --engine E --junit F] | eval-worker | bench [--calls N | --soak N] | bench-list [--sessions N]", file=sys.stderr)
        sys.exit(2)
    run()


if __name__ == "__main__":
    main()
