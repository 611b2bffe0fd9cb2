#!/usr/bin/env bash
# Stage 2 of the offline GPU recipe (docs/gpu.md): the CUDA-marked tests (`pytest -m cuda`), with
# a JUnit report. Writes tests-cuda-<gpu>.log, .xml and .json under $OUT. Extra arguments go to
# pytest (e.g. -k kernels).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
begin tests-cuda

if [ ! -e "$REPO/../shared/data" ]; then
    say "../shared/data is missing: the tests that train on real images will skip (run 00-setup.sh first)"
fi
run_limited "$(( $(left) - 10 ))" $PY -m pytest -m cuda -q -p no:cacheprovider \
    --junitxml "$OUT_DIR/tests-cuda-$GPU.xml" tests "$@"
rc=$?
summary="$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error|deselected)' "$LOG" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')"
case "$rc" in
    0) finish 0 "pytest -m cuda passed: ${summary:-see the log}" ;;
    5) finish 5 "no CUDA test was collected" ;;
    124|137) finish "$rc" "stopped at the time limit: ${summary:-see the log}" ;;
    *) finish "$rc" "CUDA tests FAILED: ${summary:-see the log}" ;;
esac
