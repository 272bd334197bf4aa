# make demo : install into .venv, train the quickstart model on synthetic cracks, test it
# make test : install into .venv with the dev extra, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint clean

# --system-site-packages lets a machine that already has torch reuse it instead of downloading it again.
$(BIN)/crackseg: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/crackseg

demo: install
	$(BIN)/crackseg fit --config configs/quickstart.yaml
	$(BIN)/crackseg test --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/best.ckpt

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check crackseg tests benchmarks

clean:
	rm -rf runs data/synthetic
