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
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,calibrate,aic,rllib,torchrl,gateway]"
	touch $@

setup: $(VENV)/.installed

# Main job: train PPO on the default scenario (the paper's PrfaaS deployment, under load) and
# print the table against every heuristic. Rewrites runs/quickstart.
run: $(VENV)/.installed
	$(PY) train.py --config paper_prfaas --rate-multiplier 2.7 --algo ppo --timesteps 1000000 --out runs/quickstart --force

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check .
