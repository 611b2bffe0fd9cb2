# Sourced by every stage of the offline GPU recipe (docs/gpu.md): where things are, where they go.
#
#   OUT          output folder (default: results/ of the repository)
#   PYTHON       the Python that holds torch (default: python3)
#   DATA         the CIFAR-10 archives (default: .data/ of the repository)
#   ADVFEAT_CACHE  advfeat's cache: decoded data, rates file (default: .cache/advfeat of the repository)
#
# Each stage stops after LIMIT seconds (default 570, under 10 minutes), writes <stage>-<gpu>.log and
# <stage>-<gpu>.status.json (its exit status, time and summary) under $OUT_DIR, and says what it did.

set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO" || exit 1
OUT_DIR="${OUT:-$REPO/results}"
PY="${PYTHON:-python3}"
DATA="${DATA:-$REPO/.data}"
STATE="$REPO/.cache/gpu-recipe"  # what a later invocation resumes from (git-ignored)
LIMIT="${LIMIT:-570}"
START="$(date +%s)"
export ADVFEAT_CACHE="${ADVFEAT_CACHE:-$REPO/.cache/advfeat}"
export PYTHONUNBUFFERED=1
# advfeat importable even where `pip install -e .` failed; wheels 00-setup.sh could not install
# into the environment were unpacked into .cache/site.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$REPO/.cache/site" ]; then export PYTHONPATH="$PYTHONPATH:$REPO/.cache/site"; fi
mkdir -p "$OUT_DIR" "$STATE" "$ADVFEAT_CACHE"

# The GPU's name as a file-name slug, as advfeat.runtime.device_slug makes it ("nvidia-h100-80gb-hbm3").
gpu_slug() {
    local name=""
    if command -v nvidia-smi >/dev/null 2>&1; then
        name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
    fi
    if [ -z "$name" ]; then echo cpu; return; fi
    echo "$name" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//'
}
GPU="$(gpu_slug)"

# seconds left of this stage's LIMIT
left() { echo $(( LIMIT - ($(date +%s) - START) )); }

# say MESSAGE: to the terminal and the stage's log
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

# begin STAGE: name the stage's log and status files, and start its log
begin() {
    STAGE="$1"
    LOG="$OUT_DIR/$STAGE-$GPU.log"
    STATUS="$OUT_DIR/$STAGE-$GPU.status.json"
    : >"$LOG"
    say "$STAGE on $GPU: repository $REPO, output $OUT_DIR, limit ${LIMIT}s"
}

# finish RC SUMMARY: write the stage's status JSON, say the summary, exit with RC
finish() {
    local rc="$1" summary="$2"
    local seconds=$(( $(date +%s) - START ))
    local escaped
    escaped="$(printf '%s' "$summary" | sed 's/\\/\\\\/g; s/"/\\"/g')"
    printf '{"stage": "%s", "gpu": "%s", "exit_status": %d, "seconds": %d, "summary": "%s", "log": "%s"}\n' \
        "$STAGE" "$GPU" "$rc" "$seconds" "$escaped" "$(basename "$LOG")" >"$STATUS"
    say "$STAGE: $summary (exit $rc, ${seconds}s) -> $STATUS"
    exit "$rc"
}

# run_limited SECONDS CMD...: CMD with SIGINT at SECONDS (KeyboardInterrupt: advfeat stops cleanly), SIGKILL
# 15 s later; its output goes to the log. Returns CMD's status (124 when stopped by the limit).
run_limited() {
    local seconds="$1"; shift
    if [ "$seconds" -lt 10 ]; then say "no time left for: $*"; return 124; fi
    timeout -s INT -k 15 "$seconds" "$@" 2>&1 | tee -a "$LOG"
    return "${PIPESTATUS[0]}"
}
