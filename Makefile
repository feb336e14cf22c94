# Two entry points for a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, at this version, and pinned through a constraints file for everything after,
# so no dependency can replace it (an unpinned torch pulls gigabytes of CUDA packages on CPU hosts).
TORCH_VERSION ?= 2.13.0

.PHONY: venv demo test bench clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -c "import torch; print('torch', torch.__version__)" && \
	  echo "torch==$$($(PY) -c 'import torch; print(torch.__version__)')" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[test]"
	@# decord's wheel carries an old platform tag that pip check flags although it runs; anything else fails.
	@problems=$$($(PY) -m pip check 2>&1 | grep -v 'decord .* is not supported on this platform' || true); \
	  if [ -n "$$problems" ]; then echo "$$problems"; exit 1; fi
	$(PY) -c "import torch, transformers, ray, decord, av, pyarrow, s3fs; print('imports ok, torch', torch.__version__)"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) jobs/video_qa.py

test: venv
	$(PY) -m pytest -q

bench: venv  # every script in benchmarks/ (docs/benchmarks.md)
	$(PY) benchmarks/selection.py
	$(PY) benchmarks/relevance_probe.py
	$(PY) benchmarks/prefill.py --model llava-1.5-7b
	$(PY) benchmarks/prefill.py --model qwen2.5-vl-7b
	$(PY) benchmarks/video_redundancy.py
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/driver_blocks.py
	$(PY) benchmarks/model_stage.py
	$(PY) benchmarks/scenes.py --videos 20 --threshold 10
	$(PY) benchmarks/segments.py
	$(PY) benchmarks/long_accuracy.py

clean:
	rm -rf $(VENV) output .pytest_cache
