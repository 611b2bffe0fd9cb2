#!/usr/bin/env bash
# Stage 0 of the offline GPU recipe (docs/gpu.md): install advfeat into the machine's own Python
# (no internet: no dependencies are fetched), install the wheels brought in .whl/, check every
# import advfeat needs, check the CIFAR-10 archives brought in .data/ and decode them once into
# advfeat's cache. Writes setup-<gpu>.log and setup-<gpu>.json under $OUT (default results/).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
begin setup

say "python: $($PY -c 'import sys; print(sys.executable, sys.version.split()[0])' 2>&1)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$LOG"
else
    say "no nvidia-smi: this machine shows no NVIDIA GPU"
fi

# 1. advfeat itself, editable, with the machine's torch (no build isolation: nothing is downloaded).
if $PY -m pip install -q --no-build-isolation --no-deps --no-index -e . >>"$LOG" 2>&1; then
    say "installed advfeat (pip install --no-build-isolation --no-deps -e .)"
else
    say "pip install -e . failed (see the log); advfeat is used from the checkout through PYTHONPATH"
fi

# 2. Wheels brought along (pure-Python ones such as torchattacks); into the environment if it is
# writable, else into .cache/site (common.sh puts it on PYTHONPATH).
shopt -s nullglob
wheels=(.whl/*.whl)
if [ "${#wheels[@]}" -gt 0 ]; then
    if $PY -m pip install -q --no-index --no-deps "${wheels[@]}" >>"$LOG" 2>&1; then
        say "installed ${#wheels[@]} wheel(s) from .whl/: ${wheels[*]}"
    elif $PY -m pip install -q --no-index --no-deps --upgrade --target .cache/site "${wheels[@]}" >>"$LOG" 2>&1; then
        export PYTHONPATH="$PYTHONPATH:$REPO/.cache/site"
        say "installed ${#wheels[@]} wheel(s) from .whl/ into .cache/site"
    else
        say "could not install the wheels in .whl/ (see the log)"
    fi
else
    say "no wheels in .whl/ (optional: torchattacks for the baselines of bench_apgd.py)"
fi

# 3. Imports: required ones fail the stage, optional ones are reported.
$PY - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, sys
required = ["torch", "triton", "numpy", "scipy", "safetensors", "tqdm", "matplotlib", "PIL", "torchvision",
            "pytest", "pytest_benchmark", "advfeat", "advfeat.cli", "advfeat.doctor", "advfeat.kernels.triton_steps"]
optional = ["torchattacks", "nvidia.dali"]
missing = []
for name in required + optional:
    try:
        module = importlib.import_module(name)
        print(f"  ok       {name} {getattr(module, '__version__', '')}")
    except Exception as err:  # noqa: BLE001
        print(f"  {'MISSING ' if name in required else 'absent  '} {name}: {type(err).__name__}: {err}")
        missing += [name] if name in required else []
import torch
print(f"  torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}, "
      f"{torch.cuda.device_count()} GPU(s)")
sys.exit(1 if missing else 0)
EOF
imports=$?

# 4. The data: both archives, checked against SHA256SUMS when it came along, decoded once.
data_ok=1
for split in train test; do
    if [ ! -s "$DATA/cifar10-jpeg-$split.tar.gz" ]; then
        say "missing $DATA/cifar10-jpeg-$split.tar.gz: copy ../shared/data/cifar10-jpeg-*.tar.gz into .data/"
        data_ok=0
    fi
done
if [ "$data_ok" = 1 ] && [ -f "$DATA/SHA256SUMS" ]; then
    if (cd "$DATA" && sha256sum --quiet -c SHA256SUMS) >>"$LOG" 2>&1; then
        say "archives match SHA256SUMS"
    else
        say "archives do NOT match SHA256SUMS"; data_ok=0
    fi
fi
if [ "$data_ok" = 1 ]; then
    run_limited "$(( $(left) - 5 ))" $PY -c "from advfeat.data import load_dataset; load_dataset('$DATA', verbose=True)" \
        || data_ok=0
    # The tests look for the data beside the checkout (../shared/data), as on a developer's machine.
    if [ ! -e "$REPO/../shared/data" ] && mkdir -p "$REPO/../shared" 2>/dev/null; then
        ln -s "$DATA" "$REPO/../shared/data" && say "linked ../shared/data -> $DATA (for tests/test_cuda.py)"
    fi
fi

if [ "$imports" = 0 ] && [ "$data_ok" = 1 ]; then
    finish 0 "advfeat installed, every required import works, CIFAR-10 decoded into $ADVFEAT_CACHE"
fi
finish 1 "setup incomplete: required imports $([ "$imports" = 0 ] && echo ok || echo MISSING), data $([ "$data_ok" = 1 ] && echo ok || echo MISSING)"
