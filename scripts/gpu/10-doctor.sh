#!/usr/bin/env bash
# Stage 1 of the offline GPU recipe (docs/gpu.md): `advfeat doctor` on the GPU, into
# doctor-<gpu>/ under $OUT (doctor.json, doctor.md, rates.json; doctor.json is rewritten after
# every check, so a stopped run keeps what it found). Also leaves the rates file in advfeat's
# cache, where `advfeat reproduce --dry-run` (stage 4) reads it. Extra flags go to the doctor
# (e.g. --check kernels --check bf16 to rerun two checks).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
begin doctor

data_flag=()
if [ -s "$DATA/cifar10-jpeg-train.tar.gz" ]; then
    data_flag=(--data "$DATA")
else
    say "no CIFAR-10 in $DATA: the doctor uses synthetic images (its accuracies then mean nothing)"
fi
run_limited "$(( $(left) - 10 ))" $PY -m advfeat doctor --out "$OUT_DIR/doctor-$GPU" "${data_flag[@]}" "$@"
rc=$?
cp "$LOG" "$OUT_DIR/doctor-$GPU/doctor.log" 2>/dev/null
case "$rc" in
    0) finish 0 "every check that ran passed: $OUT_DIR/doctor-$GPU/doctor.md" ;;
    1) finish 1 "some checks failed: $OUT_DIR/doctor-$GPU/doctor.md" ;;
    124|137) finish "$rc" "stopped at the time limit; doctor.json holds the checks that finished" ;;
    *) finish "$rc" "the doctor itself failed (see $LOG)" ;;
esac
