#!/usr/bin/env bash
# Write the locks from setup.cfg's ranges: every package btsguru installs, pinned with
# its hashes, resolved once for every platform and every Python btsguru supports (3.11+).
#
#   bash requirements/lock.sh             keep every pin that still fits the ranges (after
#                                         an edit of setup.cfg: adds, drops, moves only
#                                         what the edit asks for)
#   bash requirements/lock.sh --upgrade   move every package to its newest release within
#                                         the ranges, then run the README's test command
#
# requirements/dev.txt      everything: the runtime, PostgreSQL's driver, the tests,
#                           linters and type checker, and the build backend (the README's
#                           test command, .ci/run)
# requirements/runtime.txt  what a server runs: the runtime and PostgreSQL's driver, at
#                           dev.txt's versions (deploy/install.sh, the demo command)
# requirements/build.txt    the build backend at dev.txt's versions, for
#                           `pip install --no-build-isolation -e .` from a checkout
#                           (the demo command)
#
# The locks are made with uv (`uv pip compile --universal`): one resolution covers Linux,
# macOS and Windows on x86_64 and arm64, and the installs stay plain pip.
set -euo pipefail
cd "$(dirname "$0")/.."

upgrade=()
run_tests=false
case "${1:-}" in
    "") ;;
    --upgrade) upgrade=(--upgrade); run_tests=true ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "lock.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

uv=.venv/bin/uv
if [ ! -x "$uv" ]; then
    # the dev lock carries uv; a checkout that never ran the tests gets it on its own
    python3 -m venv .venv
    .venv/bin/pip install -q "uv>=0.5"
fi

compile() {  # compile OUTPUT INPUT... [FLAGS...]
    local out=$1; shift
    "$uv" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
        --custom-compile-command "bash requirements/lock.sh" --annotation-style line --output-file "$out" "${upgrade[@]}" "$@"
}

compile requirements/dev.txt setup.cfg requirements/build.in \
    --extra dev --extra postgres
compile requirements/runtime.txt setup.cfg \
    --extra postgres --constraint requirements/dev.txt
compile requirements/build.txt requirements/build.in --constraint requirements/dev.txt
for lock in dev runtime build; do
    echo "lock.sh: wrote requirements/$lock.txt ($(grep -c '==' requirements/$lock.txt) packages)"
done

if "$run_tests"; then
    test_command=$(bash .ci/readme-block test-command)
    echo "lock.sh: running the README's test command on the new lock"
    exec bash -c "$test_command"
fi
