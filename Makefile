# Every target that needs the environment runs `setup` first; setup reruns only when its inputs change.
PORT ?= 8080
PY := .venv/bin/python
STAMP := .venv/.setup-done
TINY := checkpoints/tiny
REAL := checkpoints/real

.PHONY: setup test test-slow serve demo serve-realtime demo-realtime bench gpu-check checkpoints clean

setup: $(STAMP)

$(STAMP): config.yaml pyproject.toml scripts/setup.sh
	scripts/setup.sh
	@touch $@

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

serve: setup
	$(PY) scripts/serve.py --port $(PORT)

demo: setup $(TINY)/model.pth
	XTTS_CHECKPOINT_DIR=$(TINY) $(PY) scripts/serve.py --port $(PORT) --demo

# The realtime (websocket) deployment: config.realtime.yaml, at ws://127.0.0.1:$(PORT)/v1/websocket.
serve-realtime: setup
	$(PY) scripts/serve.py --config config.realtime.yaml --port $(PORT)

demo-realtime: setup $(TINY)/model.pth
	XTTS_CHECKPOINT_DIR=$(TINY) $(PY) scripts/serve.py --config config.realtime.yaml --port $(PORT) --demo

# 60 to 100 minutes on 2 cores (noise); writes docs/benchmarks.{md,png,json}, docs/benchmarks-kernels.json and docs/benchmarks-concurrency.*. bench.py builds the short text's
# checkpoint itself. `.venv/bin/python scripts/bench.py --quick` is a 2-minute smoke test on tiny ones.
bench: setup $(REAL)/model.pth
	$(PY) scripts/bench.py
	$(PY) scripts/bench_kernels.py
	$(PY) scripts/bench_concurrency.py

# On a machine with one GPU, PyTorch and no network (README "Development"): installs the wheels in .whl/
# (scripts/gpu_wheels.sh fetches them on a machine with the registry), builds the real-size checkpoint,
# and writes gpu-check-out/gpu-check.{json,md}. Needs no setup: the machine's own python3 and torch.
# `PY=.venv/bin/python scripts/gpu_check.sh --device cpu --quick` rehearses it on CPU.
gpu-check:
	scripts/gpu_check.sh

checkpoints: $(TINY)/model.pth $(REAL)/model.pth

$(TINY)/model.pth: | setup
	$(PY) scripts/make_checkpoint.py --size tiny --out $(TINY)

$(REAL)/model.pth: | setup
	$(PY) scripts/make_checkpoint.py --size real --out $(REAL)

clean:
	rm -rf checkpoints .pytest_cache
