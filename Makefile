# Two commands after cloning: `make run` (main job on the default scenario) and `make test`.
# Both create the virtual environment on first use, installing the tested versions pinned in
# constraints.txt (CPU-only torch).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test lint calibrate

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,calibrate]"
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) -m prfaas_env.costmodel --gpu h200 --model prfaas-1t-hybrid --gpus-per-instance 8 --tokens 1024,8192,32768,131072

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check .
