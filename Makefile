# airgap-pypi front door. Every target is a thin call of a script in scripts/ that also works alone.
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv bundle archive mirror controller proof lock bundle-check images docker demo down test lint unit molecule bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

venv: ## Install the hash-locked controller toolchain into .venv
	@scripts/venv.sh

lock: venv ## Re-resolve the bundle locks to the newest releases (connected side)
	$(VENV)/bin/python scripts/build_bundle.py --lock-only --upgrade

# The archive's options, for bundle and archive: SIGN_KEY=<gpg key> signs its manifest, BASE=<manifest of the last
# archive carried> packs a delta on it, PART_SIZE=650M splits it for media, SEQUENCE=N overrides the sequence number.
PACK_ARGS = $(if $(SIGN_KEY),--sign-key '$(SIGN_KEY)') $(if $(BASE),--base '$(BASE)') \
	$(if $(PART_SIZE),--part-size '$(PART_SIZE)') $(if $(SEQUENCE),--sequence '$(SEQUENCE)')

bundle: venv ## Build offline_artifacts/ and the archive to carry (SIGN_KEY=, BASE=manifest, PART_SIZE=650M)
	$(VENV)/bin/python scripts/build_bundle.py $(if $(TARGETS),--targets $(TARGETS))
	$(VENV)/bin/python scripts/build_controller.py
	$(VENV)/bin/python scripts/build_mirror.py $(foreach a,$(MIRROR_ALLOW_MISSING),--allow-missing $(a))
	$(VENV)/bin/python scripts/pack_archive.py $(PACK_ARGS)

controller: venv ## Build only the offline controller's wheelhouse and collections
	$(VENV)/bin/python scripts/build_controller.py

mirror: venv ## Build only the carried-in mirror (MIRROR_ALLOW_MISSING="name@platform ...")
	$(VENV)/bin/python scripts/build_mirror.py $(foreach a,$(MIRROR_ALLOW_MISSING),--allow-missing $(a))

archive: ## Pack the repository and offline_artifacts/ into dist/ (reproducible; SIGN_KEY=, BASE=, PART_SIZE=)
	$(VENV)/bin/python scripts/pack_archive.py $(PACK_ARGS)

bundle-check: venv ## Verify offline_artifacts/ against SHA256SUMS (no network)
	$(VENV)/bin/python scripts/build_bundle.py --check
	$(VENV)/bin/python scripts/build_controller.py --check
	$(VENV)/bin/python scripts/build_mirror.py --check

docker: ## Make sure a docker daemon answers (installs docker.io on Debian/Ubuntu as root)
	@scripts/ensure_docker.sh

images: docker ## Build the local test images (debootstrap + docker import, cached)
	@scripts/build_images.sh

demo: venv docker ## Provision a sandbox index with site.yml and print its URL and a pip line
	@scripts/sandbox.sh up

down: ## Remove the sandbox
	@scripts/sandbox.sh down

test: ## Lint, unit tests and Molecule; ends with "N passed, N failed"
	@scripts/test.sh

lint: venv ## yamllint, ansible-lint (production profile), ruff, shellcheck
	@scripts/lint.sh

unit: venv ## pytest for the Python helpers
	pytest -q tests

molecule: ## molecule test of every scenario (scripts/test.sh molecule: its setup, then the scenarios in two lanes)
	@scripts/test.sh molecule

proof: venv images ## The air-gap proof: offline controller container, site.yml, client installs from the mirror
	pytest -q -p no:cacheprovider proof

bench: venv docker ## Measure provisioning, reads vs nginx, pip, uploads, bundle (BENCH_ARGS="--only reads")
	@scripts/bench.sh $(BENCH_ARGS)

clean: down ## Remove the toolchain and test results (the bundle and image cache stay)
	rm -rf $(VENV) .test-results
