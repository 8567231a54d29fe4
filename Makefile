# Each target does its own set-up into .venv, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned to the builds that lie on this machine's disk (see README).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench clean

# clip-retrieval's real client and front serve tests/test_clip_retrieval_protocol.py. It is installed
# without its dependencies (they pin numpy<2, open-clip-torch<3 ...); the test loads clip_client.py by path.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps clip-retrieval==2.45.0
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m retrieval.demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
