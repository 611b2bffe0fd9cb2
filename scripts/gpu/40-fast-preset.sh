#!/usr/bin/env bash
# Stage 4 of the offline GPU recipe (docs/gpu.md): `advfeat reproduce --preset fast` in resumable
# pieces. Each invocation runs the reproduction for at most 540 s (then SIGINT: the stage in
# progress stops; finished stages, and finished epochs and shards inside a stage, are kept), then
# prints what is done and the estimated time left (`--dry-run`, with the doctor's rates).
# Invoke it again, on the same machine, until it says the report is written. The reproduction
# lives in runs/fast-<gpu>/ (git-ignored; FAST_RUN_DIR overrides); fast-<gpu>/ under $OUT gets
# report.md, report.json and figures.tar.gz once it is done, and progress.txt every time.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
begin fast-preset

run_dir="${FAST_RUN_DIR:-$REPO/runs/fast-$GPU}"
dest="$OUT_DIR/fast-$GPU"
mkdir -p "$run_dir" "$dest"
if [ ! -s "$DATA/cifar10-jpeg-train.tar.gz" ]; then
    finish 2 "no CIFAR-10 in $DATA: the fast preset needs the real data (see docs/gpu.md)"
fi
say "reproduction folder $run_dir (a rerun resumes at the stage where it stopped)"
timeout -s INT -k 15 540 $PY -m advfeat reproduce --preset fast --data "$DATA" --out "$run_dir" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}

# What is done and what is left (reads the rates `advfeat doctor` left in the cache).
timeout -k 5 25 $PY -m advfeat reproduce --preset fast --data "$DATA" --out "$run_dir" --dry-run "$@" \
    >"$dest/progress.txt" 2>>"$LOG"
cat "$dest/progress.txt" >>"$LOG"
left_line="$(grep -E '^estimated time left' "$dest/progress.txt" | tail -n 1)"

if [ "$rc" = 0 ] && [ -f "$run_dir/report.md" ]; then
    cp "$run_dir/report.md" "$run_dir/report.json" "$dest/" 2>/dev/null
    [ -d "$run_dir/figures" ] && tar -czf "$dest/figures.tar.gz" -C "$run_dir" figures
    finish 0 "the fast preset is complete: $dest/report.md"
fi
case "$rc" in
    124|137|130) finish 124 "stopped after 540 s; run this script again to resume (${left_line:-progress unknown})" ;;
    *) finish "$rc" "advfeat reproduce FAILED (exit $rc; see $LOG); ${left_line:-progress unknown}" ;;
esac
