# The two commands of the quick start:   make train   and   make test
# make train runs the whole lifecycle (reference_impl/pipeline.py) on the laptop preset;
# make pretrain runs only the pre-training engine.
# Each creates the virtual environment .venv in the repo when it is missing (or when
# pyproject.toml changed since it was built) and installs the package with its dev extra.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= laptop
# Two pytest-xdist workers of one torch thread each (conftest.py pins the threads): the
# 2-core laptop's two cores. --dist loadfile keeps a file's module fixtures on one worker.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: venv test train pretrain bench lectures release grade clean-venv lint results

venv: $(STAMP)

# Re-install only when pyproject.toml is newer than the stamp: fast when already there.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

test: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

train: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m reference_impl pipeline --config $(CONFIG)

pretrain: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m reference_impl train --config $(CONFIG)

# Every experiment at full scale (or from its cache) -> docs/results.md and docs/figures/results/.
results: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m reference_impl results --scale full

bench: venv
	HF_HUB_OFFLINE=1 $(PY) -m reference_impl bench data --resolution 32 --json

lint: venv
	$(PY) -m ruff check reference_impl tests

clean-venv:
	rm -rf $(VENV)

# ---- course machinery (autograder/README.md) --------------------------------------------
SUBMISSIONS ?= submissions
GRADES      ?= grades
JOBS        ?= 2

# Regenerate the nbgrader release (assignments/) from the source (solutions/).
release: venv
	$(PY) -m autograder release

# Grade SUBMISSIONS/<student>/<assignment>/<notebook>.ipynb in bubblewrap sandboxes.
grade: venv
	$(PY) -m autograder grade $(SUBMISSIONS) --out $(GRADES) --jobs $(JOBS)

# Execute every lecture (COURSE_FAST=1 for the quick version) into runs/lectures/.
lectures: venv
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --output-dir runs/lectures lectures/*.ipynb
