#!/usr/bin/env bash
# Stage 3 of the offline GPU recipe (docs/gpu.md): the CUDA benchmarks (`pytest bench/ -k cuda
# --benchmark-only`), one bench file at a time, most important first, into bench-<gpu>.json under
# $OUT (pytest-benchmark's JSON, every file's benchmarks merged, plus which files finished).
# A file that did not finish within the time left is listed as such; run the script again and it
# skips the finished files (kept in .cache/gpu-recipe/) and goes on. BENCH_FILES picks the files.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
begin bench

files="${BENCH_FILES:-bench_kernels.py bench_attacks.py bench_training.py bench_synthesis.py bench_apgd.py}"
parts="$STATE/bench-$GPU"
mkdir -p "$parts"
present=()
for file in $files; do
    part="$parts/${file%.py}.json"
    if [ ! -f "bench/$file" ]; then say "$file: no such bench file"; continue; fi
    present+=("$file")
    if [ -s "$part" ]; then say "$file: done in an earlier run ($part)"; continue; fi
    if [ "$(left)" -lt 60 ]; then say "$file: not started, under a minute left"; continue; fi
    say "$file ..."
    run_limited "$(( $(left) - 20 ))" $PY -m pytest "bench/$file" --benchmark-only -k cuda -q -p no:cacheprovider \
        --benchmark-json "$part.tmp"
    rc=$?
    if [ "$rc" = 0 ] && [ -s "$part.tmp" ]; then
        mv "$part.tmp" "$part"; say "$file: done"
    elif [ "$rc" = 0 ] || [ "$rc" = 5 ]; then  # every case skipped (no GPU), or none selected
        echo '{"benchmarks": []}' >"$part"; rm -f "$part.tmp"; say "$file: no CUDA benchmark ran (skipped or none)"
    else
        rm -f "$part.tmp"; say "$file: not finished (exit $rc: stopped at the time limit, or failed; see the log)"
    fi
done

$PY - "$parts" "$OUT_DIR/bench-$GPU.json" "${present[@]}" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
parts, out, files = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
merged, status = None, {}
for name in files:
    path = parts / (name[:-3] + ".json")
    if not path.is_file():
        status[name] = "not finished"
        continue
    data = json.loads(path.read_text())
    status[name] = f"{len(data.get('benchmarks', []))} benchmarks"
    if merged is None:
        merged = dict(data, benchmarks=[])
    merged["benchmarks"] += data.get("benchmarks", [])
merged = merged or {"benchmarks": []}
merged["advfeat_files"] = status
out.write_text(json.dumps(merged, indent=2) + "\n")
for name, what in status.items():
    print(f"  {name}: {what}")
for b in merged["benchmarks"]:
    info = b.get("extra_info", {})
    rate = info.get("image_steps_per_s") or info.get("images_per_s")
    print(f"  {b.get('group', '')!s:<40} {b.get('name', '')!s:<60} {rate if rate is None else round(rate, 1)}")
sys.exit(0 if all(v != "not finished" for v in status.values()) else 3)
EOF
rc=${PIPESTATUS[0]}
if [ "$rc" = 0 ]; then finish 0 "every bench file finished: $OUT_DIR/bench-$GPU.json"; fi
finish "$rc" "some bench files did not finish (run the script again to go on): $OUT_DIR/bench-$GPU.json"
