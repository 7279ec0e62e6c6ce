# Dialtone: `make run` starts the whole platform; `make test` runs every test tier.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
CALLS ?= 50
DURATION ?= 20
ENGINE ?= realtime

RUNS ?= 1

.PHONY: install run call eval test test-unit test-integration test-e2e bench bench-calls bench-list soak lint clean

$(UV):
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --user uv || $(PYTHON) -m pip install --quiet uv

.venv/.synced: uv.lock pyproject.toml $(UV)
	$(UV) sync --frozen --all-packages
	@touch $@

install: .venv/.synced

run: install  ## start everything (embedded NATS/PostgreSQL, simulator without OPENAI_API_KEY)
	$(UV) run --frozen python -m dialtone_dev run

call: install  ## place one simulated call through the running platform and print its session
	$(UV) run --frozen python -m dialtone_dev call

# Scenario calls of every agent in AGENTS_DIR (agents/<name>/scenarios/*.yaml), RUNS times each, on a
# platform of their own (RUNNING=1: on the one `make run` started), CONCURRENCY (4) calls at a time.
# AGENT, ENGINE (realtime|live), JUNIT (a path), THRESHOLD (a pass rate) narrow or direct it; exits 1
# when a pass rate falls short.
eval: install  ## test calls of the agents' scenarios; pass rate per scenario, JUnit XML with JUNIT=path
	$(UV) run --frozen dialtone eval --runs $(RUNS) $(if $(CONCURRENCY),--concurrency $(CONCURRENCY)) $(if $(AGENT),--agent $(AGENT)) \
		$(if $(ENGINE),--engine $(ENGINE)) $(if $(JUNIT),--junit $(JUNIT)) \
		$(if $(THRESHOLD),--threshold $(THRESHOLD)) $(if $(filter 1 true yes,$(RUNNING)),--running) \
		$(if $(AGENTS_DIR),--agents-dir $(AGENTS_DIR))

# The tests mostly wait (real-time simulated calls): a full run keeps the 2 cores CI has about 60 %
# busy on 4 workers. So they run on more pytest-xdist workers than cores: a file at a time per
# worker, the longest files first (dialtone_sim.scheduling, which also prints what each file took).
# 4 workers: 5 finish sooner (7:43 in CI) but leave the timing-sensitive tests (barge-in precision,
# gateway moves, takeover, twenty calls at once) too little CPU on a slow or shared machine; 6 fail
# them outright. `make test TEST_WORKERS=5` for the faster run on a quiet machine.
# `make test TEST_WORKERS=0` runs the tests in one process; `uv run pytest FILE` always does.
TEST_WORKERS ?= 4
XDIST := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# mypy runs beside the tests (they mostly wait); its report comes as soon as it is done, and the
# tests' summary stays the last thing printed. Either failing fails `make test`.
tools:  ## install the system tools the tests use (espeak-ng, sox, caddy, prometheus, chromium, node) with apt-get
	@bash dev/tools.sh install

# One policy on every machine: the tests use those tools for real, so `make test` first checks they
# are all there (`make tools` installs them) and then forbids every fallback (synthetic speech, a
# skipped Caddy or browser test).
test: export DIALTONE_REQUIRE_SPEECH = 1
test: export DIALTONE_REQUIRE_CADDY = 1
test: export DIALTONE_REQUIRE_CHROMIUM = 1
test: install  ## lint, then the type check and the unit, integration and end-to-end tiers side by side
	@bash dev/tools.sh check
	$(UV) run --frozen ruff check .
	@$(UV) run --frozen mypy > .mypy.log 2>&1 & mypy=$$!; \
	$(UV) run --frozen pytest $(XDIST) & tests=$$!; \
	wait $$mypy; typed=$$?; echo; echo "mypy: $$(tail -1 .mypy.log)"; [ $$typed -eq 0 ] || cat .mypy.log; \
	rm -f .mypy.log; wait $$tests; passed=$$?; \
	[ $$passed -eq 0 ] && [ $$typed -eq 0 ]

test-unit: install
	$(UV) run --frozen pytest -m unit

test-integration: install
	$(UV) run --frozen pytest -m integration $(XDIST)

test-e2e: install
	$(UV) run --frozen pytest -m e2e $(XDIST)

SESSIONS ?= 1000000
bench: install  ## CALLS concurrent simulated calls on ENGINE, platform vs a single-process bridge (README: Performance), then the call list over SESSIONS sessions
	$(UV) run --frozen python -m dialtone_dev bench --calls $(CALLS) --duration $(DURATION) --engine $(ENGINE)
	$(UV) run --frozen python -m dialtone_dev bench-list --sessions $(SESSIONS)

bench-calls: install  ## only the calls part of `make bench`
	$(UV) run --frozen python -m dialtone_dev bench --calls $(CALLS) --duration $(DURATION) --engine $(ENGINE)

bench-list: install  ## SESSIONS synthetic sessions in a scratch PostgreSQL: call list, filter and search ms per page
	$(UV) run --frozen python -m dialtone_dev bench-list --sessions $(SESSIONS)

# CALLS is 1000 for the soak unless given (`make soak CALLS=200` or `CALLS=200 make soak`).
soak: install  ## CALLS=1000 short calls in sequence: RSS of each service at start, after 50 calls, at the end
	$(UV) run --frozen python -m dialtone_dev bench --soak $(if $(filter command line environment,$(origin CALLS)),$(CALLS),1000)

lint: install
	$(UV) run --frozen ruff check .
	$(UV) run --frozen mypy

clean:
	rm -rf .dialtone .venv
