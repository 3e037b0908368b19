# Two commands for a fresh machine:
#   make demo   set up .venv and scan the built-in example LoRA (offline, no arguments)
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench mini mini-v2 leak-v2 clean

setup: $(STAMP)

# torch first, pinned to the CPU build this machine keeps on disk: a plain `torch`
# requirement would otherwise pull a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $@

demo: setup
	$(BIN)/lora-scan

test: setup
	$(BIN)/python -m pytest -n 2 -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python scripts/bench_spectra.py
	$(BIN)/python scripts/bench_estimators.py
	$(BIN)/python scripts/bench_scan.py

# The mini LoRA-WiSE, end to end (about 3.5 h on 2 cores here; resumable: rerun after a kill, or in a
# new session: jobs already built into $(MINI_DIR) are skipped and the new ones merged in).
# Trains 600 tiny-sd LoRAs into runs/ (not committed), commits-ready outputs: the spectra at
# MINI_STEPS, the packaged tiny-sd bank (without HOLD_OUT), docs/results.md.
MINI_STEPS := 300,600,900,1200,1400
BANK_STEPS := 600,1200
HOLD_OUT   := pool:photo-rocket
MINI_DIR   := benchmark/mini-lora-wise
mini: setup
	OMP_NUM_THREADS=1 $(BIN)/lora-wise generate mini --out runs/mini --workers 2 \
		$(if $(wildcard $(MINI_DIR)/lora_wise.json),--skip-built $(MINI_DIR))
	$(BIN)/lora-wise build runs/mini $(MINI_DIR) --steps $(MINI_STEPS) --merge
	$(BIN)/lora-wise fit-bank $(MINI_DIR) --config low-tiny_sd-r8 --config medium-tiny_sd-r8 \
		--hold-out $(HOLD_OUT) --steps $(BANK_STEPS) --out lora_wise/data/banks
	$(RESULTS)

# The mini LoRA-WiSE v2 (issue 14): 600 tiny-sd-v2 LoRAs on 50 emoji concepts (mini-v2, medium range
# first) plus the medium range at ranks 4 and 16 on 20 of them (mini-v2-ranks) and at rank 8 under the
# flip (20 concepts) and DP-SGD (epsilon 10, 10 concepts) defences (mini-v2-flip, mini-v2-dp10: paper
# Table 6); resumable like `mini`; then the packaged tiny-sd-v2 bank (without HOLD_OUT2), the bundled
# example and docs/results.md (about 4 h on 2 quiet cores). Needs npm once, to fetch the pinned emoji
# packages into the cache.
MINI2_DIR  := benchmark/mini-lora-wise-v2
MINI2_RUNS := runs/mini-v2
HOLD_OUT2  := pool:noto-animal-mammal
# The bundled example, a v2 LoRA held out of the v2 bank (committed once: a later session's runs/ may
# not hold it).
EXAMPLE    := $(MINI2_RUNS)/low-tiny_sd_v2-r8/pool-noto-animal-mammal/n0004/step-01200
mini-v2: setup
	for grid in mini-v2 mini-v2-ranks mini-v2-flip mini-v2-dp10; do \
		OMP_NUM_THREADS=1 $(BIN)/lora-wise generate $$grid --out $(MINI2_RUNS) --workers 2 \
			$(if $(wildcard $(MINI2_DIR)/lora_wise.json),--skip-built $(MINI2_DIR)) || exit 1; \
	done
	$(BIN)/lora-wise build $(MINI2_RUNS) $(MINI2_DIR) --steps $(MINI_STEPS) --merge
	$(BIN)/lora-wise fit-bank $(MINI2_DIR) --config low-tiny_sd_v2-r8 --config medium-tiny_sd_v2-r8 \
		--hold-out $(HOLD_OUT2) --steps $(BANK_STEPS) --out lora_wise/data/banks
	if [ -f $(EXAMPLE).safetensors ]; then mkdir -p scanner/data && \
		cp $(EXAMPLE).safetensors scanner/data/example.safetensors && cp $(EXAMPLE).json scanner/data/example.json; fi
	$(RESULTS)

# docs/results.md, the whole page: v1 and v2 side by side (v2 also split by class), v2's cross-rank and
# cross-defence arms.
# Both `mini` and `mini-v2` end with it, so neither drops the other's tables; a v2 config not built yet is
# reported as such. `./` keeps a v2 folder that does not exist yet from being taken for a Hub repo id.
RESULTS = $(BIN)/python scripts/reproduce_tables.py --benchmark v1=$(MINI_DIR) --benchmark v2=./$(MINI2_DIR) \
	--config low-tiny_sd-r8 --config medium-tiny_sd-r8 --config low-tiny_sd_v2-r8 \
	--config medium-tiny_sd_v2-r8 --config medium-tiny_sd_v2-r4 --config medium-tiny_sd_v2-r16 \
	--config medium-tiny_sd_v2-r8-flip --config medium-tiny_sd_v2-r8-dp10 \
	--split-by-class v2 --out docs/results.md

# The leak at the issue's scale on tiny-sd-v2 (docs/leak.md): 250 identities (200 shadows, 50 victims),
# 1000 steps at lr 3e-4 (the v2 benchmark's rate, docs/regimes.md), seeds 0 1 2 under the defences
# none, flip, dp:1 and dp:10, plus seed 0 with own victim seeds, undefended and under dp:10: 14 runs
# in runs/leak-v2/<defence>-s<seed> (the colon dropped: dp10-s0; vseeds-s0, dp10-vseeds-s0), each
# trained, attacked and evaluated, then docs/leak.md's measured section by defence over the seeds, and
# docs/leak/defences.png.
# Cost: one run is 250 x 1000 = 250k model-steps of LoRA training, about 1.5 h of one core at 41-45
# model-steps/s per process (measured: 6023 s for none-s0, 5534 s and 5543 s for seeds 1 and 2 side by
# side; DP-SGD and the flip train as fast), plus the attack and its ablation (200-235 s each) and the
# evaluation of 50 victims (about 20 min): about 2 h a run, 28 core-hours for the 14, half that in wall
# time with `make -j2 leak-v2`. LEAK_EVAL adds flags to the evaluation: `make leak-v2
# LEAK_EVAL=--loss-diagnostic` also writes loss_identification.json, about an hour more per run.
# Resumable: a run whose evaluation.json (written last without the diagnostic) exists is skipped;
# leak_pilot.py skips finished groups, and the attack is not retrained once saved.
LEAK2_RUNS := $(foreach d,none flip dp1 dp10,$(foreach s,0 1 2,runs/leak-v2/$(d)-s$(s))) \
	runs/leak-v2/vseeds-s0 runs/leak-v2/dp10-vseeds-s0
LEAK_EVAL ?=
leak-v2: $(addsuffix /evaluation.json,$(LEAK2_RUNS))
	$(BIN)/python scripts/leak_report.py $(LEAK2_RUNS) --doc docs/leak.md

# <defence>-s<seed>; [<defence>-]vseeds-s<seed>: every victim on its own seed (--victim-seeds; the
# shadows keep the run's), the realistic setting, reported as its own group. Its shadows are the same
# jobs as <defence>-s<seed>'s, so the measured vseeds-s0 and dp10-vseeds-s0 hard-linked them in with the
# attack and trained their 50 victims only (docs/leak.md); this rule trains all 250.
runs/leak-v2/%/evaluation.json: | setup
	d=$$(echo $* | sed 's/-s[0-9]*$$//'); s=$$(echo $* | sed 's/.*-s//'); v=; \
	case $$d in *vseeds) v=--victim-seeds; d=$$(echo $$d | sed 's/-*vseeds$$//'); d=$${d:-none};; esac; \
	case $$d in dp*) how="--defence dp:$${d#dp}";; *) how="--defence $$d";; esac; \
	OMP_NUM_THREADS=1 $(BIN)/python scripts/leak_pilot.py $(@D) --backbone tiny-sd-v2 --identities 250 \
		--steps 1000 --lr 3e-4 --seed $$s $$how $$v && \
	{ [ -f $(@D)/attack-nostep.safetensors ] || OMP_NUM_THREADS=1 $(BIN)/lora-wise leak train $(@D); } && \
	OMP_NUM_THREADS=1 $(BIN)/lora-wise leak evaluate $(@D) --k 8 $(LEAK_EVAL)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
