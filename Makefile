# ferlens: two commands matter — `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2
export PYTHONHASHSEED  ?= 0
# when make started (before setup): the demo reports how long `make demo` took to an answering app
export FERLENS_MAKE_T0 := $(shell date +%s.%N)

.PHONY: setup demo app test test-fast bench chromium clean readme

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Debian's chromium for the browser tests (never `playwright install`).
chromium:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	    echo "chromium could not be installed: browser tests will be skipped"; }

demo: setup
	$(BIN)/python -m train.demo

app: setup
	$(BIN)/streamlit run app/main.py

# After `make demo`: rewrite README.md's generated blocks from the demo's facts.json (no number typed by hand).
readme: setup
	$(BIN)/python -m probe readme --facts artifacts/reports/demo/facts.json --readme README.md

test: setup chromium
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not browser" tests

bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) artifacts/runs artifacts/data artifacts/figures artifacts/reports
