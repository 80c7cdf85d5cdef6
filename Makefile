# Laneway: `make run` serves the demo policy; `make test` runs the whole suite.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PORT    ?= 4000
POLICY  ?= policies/demo.yaml
# System binaries the tests drive for real (installed from Debian's packages when missing);
# npm installs the pinned Codex CLI into the git-ignored .tools/ (tests/e2e/test_codex_cli.py).
# Debian's `prometheus` package also provides `promtool` (alert rule checks and unit tests).
SYSTEM_BINS := redis-server npm prometheus

.PHONY: run test bench lock system-deps clean

$(BIN)/laneway: requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "installing the locked dependencies into $(VENV) (the first time takes a few minutes)"
	$(BIN)/pip install --progress-bar on --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

run: $(BIN)/laneway
	PORT=$(PORT) $(BIN)/laneway serve --policy $(POLICY) --port $(PORT)

test: $(BIN)/laneway system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(BIN)/laneway
	$(BIN)/python bench/overhead.py

system-deps:
	@missing=""; for b in $(SYSTEM_BINS); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing missing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Regenerate the hashed lock files after editing requirements*.in (needs network to PyPI).
lock:
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile --python 3.11 --generate-hashes -q requirements.in -o requirements.lock
	$(BIN)/uv pip compile --python 3.11 --generate-hashes -q requirements-dev.in -o requirements-dev.lock

clean:
	rm -rf $(VENV) .pytest_cache
