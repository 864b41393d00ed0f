# bloodml: `make demo` and `make test` each install first, so two commands set up a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= wbc-zheng2018
EPOCHS ?= 20
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing bloodml into $(VENV): about 6.5 GB (PyPI's PyTorch is the CUDA build, which runs on CPUs too), a few minutes"
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -m pip install --quiet -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import bloodml, torch, timm, mlflow, optuna" && touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m bloodml.demo --data "$(DATA)" --epochs $(EPOCHS)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts .pytest_cache
