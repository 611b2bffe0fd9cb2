"""Compare every stage's result (by stage id) between two reproduction folders; ignore timing fields."""
import json, sys
from pathlib import Path
TIMING = {"seconds", "images_per_s", "image_steps_per_s", "image_steps_s", "runtime_s", "wall_seconds", "images_s"}
def load(folder):
    out = {}
    for f in Path(folder, "stages").glob("*/stage.json"):
        r = json.loads(f.read_text()); out[r["id"]] = r["result"]
    return out
def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in TIMING and not k.endswith("_per_s") and k != "seconds"}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x
a, b = load(sys.argv[1]), load(sys.argv[2])
print(len(a), "stages before,", len(b), "after; same ids:", sorted(a) == sorted(b))
diff = [k for k in sorted(a) if strip(a[k]) != strip(b.get(k))]
print("stages whose results differ (timing fields ignored):", diff or "none")
for k in diff[:3]:
    print(k, json.dumps(strip(a[k]))[:300]); print(k, json.dumps(strip(b[k]))[:300])
def paths(x, y, pre=""):
    if isinstance(x, dict) and isinstance(y, dict):
        for k in set(x) | set(y):
            yield from paths(x.get(k), y.get(k), f"{pre}.{k}")
    elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y)):
            yield from paths(u, v, f"{pre}[{i}]")
    elif x != y:
        yield pre, x, y
found = {}
for k in diff:
    for p, x, y in paths(strip(a[k]), strip(b[k])):
        found.setdefault(p.split("[")[0] if "robust" in p else p, (k, x, y))
for p, v in list(found.items())[:20]:
    print(p, v)
print("---- every differing path (deduplicated across stages):")
import re
allp = {}
for k in diff:
    for p, x, y in paths(strip(a[k]), strip(b[k])):
        key = re.sub(r"\[\d+\]", "[]", p)
        if key not in allp:
            allp[key] = (k, x, y)
bad = []
for p, (k, x, y) in sorted(allp.items()):
    same_number = isinstance(x, float) and isinstance(y, float) and abs(x - y) < 1e-6
    meta = x is None and p.split(".")[-1] in ("checkpoint_every", "version", "attacks", "eps")
    timing = p.endswith("shard_seconds")
    tag = "same value (float32 vs float64)" if same_number else "new metadata field" if meta else "timing" if timing else "DIFFERENT"
    if tag == "DIFFERENT": bad.append(p)
    print(f"{tag:34s} {p}  e.g. {k}: {str(x)[:60]} -> {str(y)[:60]}")
print("real differences:", bad or "none")
