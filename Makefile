# The README's two commands: `make demo` and `make test`. Everything else supports them.
SHELL := /bin/bash
# Empty: tools/ensure_venv.sh takes python3.11, else python3 when it is 3.11+.
PYTHON ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/demo

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@# On a fresh Debian machine this installs python3 / python3.X-venv with apt where missing.
	test -x $(BIN)/python || PYTHON="$(PYTHON)" bash tools/ensure_venv.sh $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# scenedetect and rapidocr-onnxruntime pull in opencv-python, whose cv2 needs libGL; keep only the headless build's cv2.
	$(BIN)/python -m pip uninstall --quiet -y opencv-python
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps "$$($(BIN)/python -c 'import importlib.metadata as m; print("opencv-python-headless==" + m.version("opencv-python-headless"))')"
	touch $(STAMP)

# The any2capins recipe on the demo clips. Stages whose model weights are not here are left
# out and listed with the command that brings them in (any2cap models fetch ...).
demo: install
	$(BIN)/any2cap build any2capins --input demo/clips --out $(RUN_DIR) --skip-unavailable
	@echo
	@echo "Run directory: $(RUN_DIR)"
	@echo "Next:  $(BIN)/any2cap runs show $(RUN_DIR)      (the run report)"
	@echo "       $(BIN)/any2cap runs records $(RUN_DIR)   (the records: conditions, instances)"
	@echo "Models: $(BIN)/any2cap models list               (fetch: $(BIN)/any2cap models fetch)"
	@echo "Review: printf 'a-long-password\\n' | $(BIN)/any2cap review users add me --role admin --run $(RUN_DIR)"
	@echo "        $(BIN)/any2cap review serve --run $(RUN_DIR)   (http://127.0.0.1:8000/)"
	@echo "Export: $(BIN)/any2cap export --run $(RUN_DIR) --out shards/"

test: install
	@# Debian's Chromium and a local PostgreSQL for the review tests (installed where missing).
	bash tools/ensure_services.sh
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) runs bench-results
