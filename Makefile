# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 3000
# twistd finds twisted/plugins/presence_plugin.py through sys.path (an editable install
# does not place it in site-packages).
export PYTHONPATH := $(CURDIR)

.PHONY: run test lint typecheck unit e2e bench bench-fanout bench-rooms bench-memory clean

$(BIN)/.installed: setup.cfg pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' -e ./clients/python
	touch $@

run: $(BIN)/.installed
	$(BIN)/twistd -n --pidfile= presence --port tcp:$(PORT)

lint: $(BIN)/.installed
	$(BIN)/ruff check presence tests twisted bench clients/python
	$(BIN)/ruff format --check presence tests twisted bench clients/python

typecheck: $(BIN)/.installed
	$(BIN)/mypy
	cd clients/python && ../../$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest -m "not e2e"

e2e: $(BIN)/.installed
	$(BIN)/pytest -m e2e

test: lint typecheck
	$(BIN)/pytest

# Against the Node reference peer in ../shared/bench (needs node and npm): every figure,
# fan-out at 100/500/1000/5000 watchers and holds of 1,000/10,000/19,900 included, in one run.
bench: $(BIN)/.installed
	$(PYTHON) bench/all.py

bench-fanout: $(BIN)/.installed
	$(PYTHON) bench/fanout.py

# What one idle connection costs, part by part (tracemalloc, /proc/slabinfo; loopback only).
bench-memory: $(BIN)/.installed
	$(BIN)/python bench/conn_cost.py

# A room of 10,000 members and a join storm of 5,000 users in 10 s (loopback only).
bench-rooms: $(BIN)/.installed
	$(BIN)/python bench/rooms.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache twisted/plugins/dropin.cache
