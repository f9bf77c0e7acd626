# Two entry points: `make demo` (set up + run the embedded end-to-end demo) and
# `make test` (set up + run the whole test suite). Both build their own .venv.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# The local CPU build of torch; the library itself only asks for torch>=2.4. Extras are installed with torch
# pinned by a constraint so that nnunetv2 (the nnunet extra) resolves beside it.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	printf '%s\n' "$(TORCH_SPEC)" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[test,nnunet]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/segxai demo --out demo_out

test: venv
	$(PY) -m pytest -n 2 --dist loadgroup -q tests

clean:
	rm -rf $(VENV) demo_out .segxai-cache
