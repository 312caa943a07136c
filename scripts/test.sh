#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it: lint, unit tests, Molecule, the air-gap proof.
# Builds what is missing first (docker, toolchain, bundle, images), then runs the steps in two lanes side by side
# (each scenario has its own container names and docker network). Ends with a table of the steps, the slowest
# test cases and Ansible tasks, and "N passed, N failed, N skipped".
#
#   scripts/test.sh [STEP ...]   only these steps (after setup): lint unit default el operations network cluster
#                                cluster-plain inputs demo proof; `molecule` stands for every Molecule scenario (make molecule)
#   AIRGAP_PYPI_TEST_LANES=1     run the steps one after the other instead of in two lanes
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
# The Molecule scenarios (molecule/NAME), one step each in the lanes below: the only list of them.
scenarios=(default el operations network cluster cluster-plain)
steps=(lint unit "${scenarios[@]}" inputs demo proof)
wanted=()
for name in "$@"; do
    if [ "$name" = molecule ]; then wanted+=("${scenarios[@]}"); else wanted+=("$name"); fi
done
for name in "${wanted[@]}"; do
    [[ " ${steps[*]} " == *" $name "* ]] || { echo "scripts/test.sh: no step '$name' (steps: ${steps[*]} molecule)" >&2; exit 2; }
done
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_NOCOLOR=1 PY_COLORS=0
results=.test-results
rm -rf "$results" && mkdir -p "$results/logs"
# Every playbook run of the suite appends its tasks' wall times here (molecule/shared/callback_plugins).
export AIRGAP_PYPI_TASK_TIMES="$PWD/$results/task-times.jsonl"
# The environment replaces ansible.cfg's callbacks: keep its module payload cache (callback_plugins/), here in a
# directory of this run's own, so every run starts cold as a fresh machine does.
export ANSIBLE_CALLBACK_PLUGINS="$PWD/callback_plugins:$PWD/molecule/shared/callback_plugins"
export ANSIBLE_CALLBACKS_ENABLED=airgap_pypi_module_cache,task_times AIRGAP_PYPI_MODULE_CACHE="$PWD/$results/module-cache"
# pytest (unit tests and every scenario's verifier) prints its 15 slowest tests in each step's log.
export PYTEST_ADDOPTS="--durations=15"
began=$(date +%s.%N)

# record NAME LANE STARTED RC JUNIT: one line of steps.tsv (scripts/test_report.py reads it).
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(date +%s.%N)" "$4" "$5" >>"$results/steps.tsv"
}

# setup NAME CMD...: a setup step, its output shown as it comes (a fresh machine's installs take minutes).
setup() {
    local name=$1 started rc
    shift
    printf '\n==> setup: %s (%s)\n' "$name" "$(date +%H:%M:%S)"
    started=$(date +%s.%N)
    "$@"
    rc=$?
    record "setup: $name" - "$started" "$rc" -
    if [ "$rc" -ne 0 ]; then
        echo "FAILED: setup: $name (exit $rc): the tests cannot run"
        python3 scripts/test_report.py "$results" || true
        exit 1
    fi
}

wants() {
    [ "${#wanted[@]}" -eq 0 ] && return 0
    local step
    for step in "${wanted[@]}"; do [ "$step" = "$1" ] && return 0; done
    return 1
}

# step NAME LANE JUNIT CMD...: a test step; its output goes to logs/NAME.log and is printed whole when it ends,
# so two lanes never interleave their lines.
step() {
    local name=$1 lane=$2 junit=$3 log started rc
    shift 3
    wants "$name" || return 0
    log="$results/logs/$name.log"
    started=$(date +%s.%N)
    printf '==> %s: started %s in lane %s\n' "$name" "$(date +%H:%M:%S)" "$lane"
    AIRGAP_PYPI_STEP=$name "$@" >"$log" 2>&1 </dev/null
    rc=$?
    record "$name" "$lane" "$started" "$rc" "$junit"
    {
        flock 9
        printf '\n==> %s (lane %s): exit %s at %s\n' "$name" "$lane" "$rc" "$(date +%H:%M:%S)"
        cat "$log"
        printf '<== %s: exit %s\n' "$name" "$rc"
    } 9>"$results/.print-lock"
}

unit() {
    pytest -q -p no:cacheprovider --junitxml="$results/unit.xml" tests || return 1
    # The proof and the bad inputs run later: a broken import in them must show here, in seconds.
    pytest -q -p no:cacheprovider --collect-only proof inputs >/dev/null
}

scenario() {
    MOLECULE_JUNIT_XML="$PWD/$results/molecule-$1.xml" molecule test --scenario-name "$1"
}

# Lane A: the cluster scenario (a writer, two replicas, two balancers sharing an address, a client, backup and
# restore, two promotions, a move to an own PKI), the real-EL scenario (NOT RUN without operator images) and the
# default scenario (the largest: plain HTTP and TLS hosts). Lane B: what needs no containers first (lint, the unit
# tests), then operations, network, the plain HTTP cluster, the bad inputs (inputs/, moved out of the default
# scenario to even out the lanes), demo and the air-gap proof. The two largest scenarios never overlap: run side by side (default with
# cluster, tried on 2026-12-05) each took a quarter longer and make test 25.5 and 26 minutes. The cluster goes
# first: alone it leaves half the two cores idle (it waits on its services: failovers, 200 installs in a row), so
# it is better beside the unit tests than at the end of the run; the default scenario, which keeps both cores
# busy, takes the end.
lane_a() {
    step cluster A molecule-cluster.xml scenario cluster
    # molecule/el runs on MOLECULE_EL_IMAGES / MOLECULE_UBUNTU_IMAGES when set; without them it writes skipped
    # cases that say "NOT RUN", never passed.
    step el A molecule-el.xml .venv/bin/python scripts/run_el_scenario.py --results "$results"
    step default A molecule-default.xml scenario default
}

lane_b() {
    step lint B - scripts/lint.sh
    step unit B unit.xml unit
    step operations B molecule-operations.xml scenario operations
    step network B molecule-network.xml scenario network
    # The cluster without TLS (writer, replica, balancer, client): what differs from the HTTPS cluster of lane A.
    step cluster-plain B molecule-cluster-plain.xml scenario cluster-plain
    # Bad input on pristine containers of its own (no scenario's hosts): site.yml stops before any change; and a
    # writer left without replicas, on the same harness.
    step inputs B inputs.xml pytest -q -p no:cacheprovider --junitxml="$results/inputs.xml" inputs
    # The README's quick start on a clean clone of HEAD: make demo, its pip line, make down.
    step demo B demo.xml pytest -q -s -p no:cacheprovider --junitxml="$results/demo.xml" proof/test_demo.py
    step proof B airgap.xml pytest -q -p no:cacheprovider --junitxml="$results/airgap.xml" proof/test_airgap.py
}

setup docker scripts/ensure_docker.sh
setup toolchain scripts/venv.sh
setup bundle sh -c '.venv/bin/python scripts/build_bundle.py --check >/dev/null 2>&1 || .venv/bin/python scripts/build_bundle.py'
setup controller sh -c '.venv/bin/python scripts/build_controller.py --check >/dev/null 2>&1 || .venv/bin/python scripts/build_controller.py'
setup mirror sh -c '.venv/bin/python scripts/build_mirror.py --check >/dev/null 2>&1 || .venv/bin/python scripts/build_mirror.py'
setup images scripts/build_images.sh
# The front server's and the replicas' tests install nginx, rsync and openssh from a stand-in OS mirror (built once
# from Debian's mirror, then cached; a changed package list rebuilds it).
setup "os mirror" sh -c 'scripts/os_mirror.sh build >/dev/null'
# The browse page test needs Debian's chromium; without it that test says NOT RUN (skipped), never passed.
setup chromium sh -c 'scripts/ensure_chromium.sh || echo "setup: chromium missing: the browse page test will be NOT RUN"'
# The metrics tests check /metrics with Debian's promtool; without it those checks say NOT RUN (skipped), never passed.
setup promtool sh -c 'scripts/ensure_deb_tool.sh promtool prometheus || echo "setup: promtool missing: the metrics format tests will be NOT RUN"'
# The replica pull tests run the real rsync (Debian's rsync); without it they say NOT RUN (skipped), never passed.
setup rsync sh -c 'scripts/ensure_deb_tool.sh rsync rsync || echo "setup: rsync missing: the replica pull tests will be NOT RUN"'

printf '\n==> tests (%s)\n' "$(date +%H:%M:%S)"
if [ "${AIRGAP_PYPI_TEST_LANES:-2}" = 1 ]; then
    lane_b
    lane_a
else
    lane_a &
    lane_a_pid=$!
    lane_b
    wait "$lane_a_pid"
fi

wall=$(python3 -c "import sys, time; print(time.time() - float(sys.argv[1]))" "$began")
.venv/bin/python scripts/test_report.py "$results" --wall "$wall"
