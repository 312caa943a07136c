# airgap-pypi front door. Every target is a thin call of a script in scripts/ that also works alone.
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv bundle lock bundle-check images docker demo down test lint unit molecule bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

venv: ## Install the hash-locked controller toolchain into .venv
	@scripts/venv.sh

lock: venv ## Re-resolve the bundle locks to the newest releases (connected side)
	$(VENV)/bin/python scripts/build_bundle.py --lock-only --upgrade

bundle: venv ## Build the offline bundle in offline_artifacts/ (connected side)
	$(VENV)/bin/python scripts/build_bundle.py $(if $(TARGETS),--targets $(TARGETS))

bundle-check: venv ## Verify offline_artifacts/ against SHA256SUMS (no network)
	$(VENV)/bin/python scripts/build_bundle.py --check

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

lint: venv ## yamllint, ansible-lint (production profile), ruff
	yamllint --strict . && ansible-lint --profile production --offline && ruff check scripts tests molecule roles && ruff format --check scripts tests molecule roles

unit: venv ## pytest for the Python helpers
	pytest -q tests

molecule: venv images bundle ## molecule test (default scenario)
	molecule test --scenario-name default

bench: venv docker ## Measure provisioning and bundle numbers (reports, never asserts)
	@scripts/bench.sh

clean: down ## Remove the toolchain and test results (the bundle and image cache stay)
	rm -rf $(VENV) .test-results
