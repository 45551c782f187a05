# One-command set-up and runs. Every target installs what it needs, idempotently.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Every core of this machine; `make demo CORES=2` for fewer.
CORES ?= $(shell nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)
STAMP := $(VENV)/.installed
# What `make readme` shows from a finished demo run.
DEMO_TABLE ?= results/tables/slurp-en.slurp-en.md
DEMO_FIGURE := results/figures/budget_curves.png
DEMO_FINDINGS := results/tables/findings.md

.PHONY: setup demo readme test test-fast browser lint report clean-results dev-alignment

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, by exact pin: an unpinned resolver would fetch a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

## Run the embedded demo grid end to end (data -> speech -> budgets -> mixtures -> fine-tune -> decode -> score -> tables, figures, report).
## It changes no tracked file. Its wall time (after install) is appended to logs/demo_wall_time.log;
## benchmarks/demo_stages.py splits it by stage.
demo: $(STAMP)
	mkdir -p logs
	@start=$$(date +%s); status=0; \
	$(BIN)/snakemake --cores $(CORES) \
	&& $(BIN)/snakemake --cores 1 --report results/report.html \
	|| status=$$?; \
	echo "$$(date -u +%Y-%m-%dT%H:%M:%SZ) make demo: $$(( $$(date +%s) - start )) s wall, exit $$status," \
		"$(CORES) cores, commit $$(git rev-parse --short HEAD 2>/dev/null || echo none)" | tee -a logs/demo_wall_time.log; \
	exit $$status

## Show a finished demo's table, findings and figure in README.md (and docs/demo/, both tracked).
readme: $(STAMP)
	@for file in $(DEMO_TABLE) $(DEMO_FIGURE) $(DEMO_FINDINGS); do \
		test -f $$file || { echo "make readme: $$file is missing; run \`make demo\` first" >&2; exit 1; }; \
	done
	$(BIN)/lalm-slu update-readme --table $(DEMO_TABLE) --figure $(DEMO_FIGURE) --findings $(DEMO_FINDINGS)

## Speech/text alignment on the SLURP dev split (the number to optimise; test stays for the demo's findings):
## text-only fine-tuning of MODEL, then speech, text and cascade decoding of dev. Makes missing demo manifests with
## the workflow's rules; writes benchmarks/results/dev_alignment.json (work files in work/dev_alignment/).
MODEL ?= models/demo-qwen2-audio
SEED ?= 0
dev-alignment: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python benchmarks/dev_alignment.py --model $(MODEL) --seed $(SEED) \
		--cores $(CORES) --threads $(CORES)

## Unit tests plus the slow end-to-end tests (the whole suite, as CI runs it).
test: $(STAMP) browser
	$(BIN)/python -m pytest -q

## Headless chromium for the report's browser tests: installed (Debian) when missing and when root.
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	else echo "chromium is missing and we are not root: the browser tests will be skipped (apt-get install -y chromium)"; fi

## Only the fast unit tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

clean-results:
	rm -rf results .snakemake/metadata
