"""How much does inverting through fake_relu change the inversion? (issue: fidelity, item 1)

The same models, images, start images and steps, with and without fake_relu: the relative
feature distance ||g(z) - g(x)|| / ||g(x)|| reached by the inversion (D_R with the robust
model, D_NR with the standard one), and how it evolves with the number of steps.

    python scripts/fake_relu_study.py --standard STD_MODEL --robust ROBUST_MODEL --data ../shared/data \
        --out results/fake-relu-cpu.json
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from advfeat.checkpoint import load_model
from advfeat.io import write_json
from advfeat.data import load_dataset
from advfeat.runtime import device_name, resolve_device
from advfeat.settings import SynthSettings
from advfeat.synthesis import sample_plan, synthesize_shard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--standard", required=True)
    parser.add_argument("--robust", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--subset", type=int, default=10000, help="the models' training subset")
    parser.add_argument("--images", type=int, default=1000, help="images inverted")
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--step-size", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = resolve_device("auto")
    train = load_dataset(args.data, subset=args.subset, seed=args.seed).train
    # Every 10th image: spread over the classes (the subset is stored class by class).
    train = train.take(np.arange(0, len(train), max(1, len(train) // args.images))[:args.images])
    rows = []
    for kind, model_dir in (("nr", args.standard), ("r", args.robust)):
        model, _ = load_model(model_dir, device)
        for steps in args.steps:
            for fake_relu in (True, False):
                settings = SynthSettings.of(kind, steps=steps, step_size=args.step_size, fake_relu=fake_relu,
                                            seed=args.seed, storage="float32", batch_size=500)
                plan = sample_plan(replace(settings), train.labels, model.num_classes)
                start = time.perf_counter()
                arrays = synthesize_shard(model, train, plan, range(len(train)), settings, device)
                rows.append({"kind": kind, "steps": steps, "fake_relu": fake_relu,
                             "initial_distance": float(arrays["initial_distance"].mean()),
                             "final_distance": float(arrays["final_distance"].mean()),
                             "final_distance_median": float(np.median(arrays["final_distance"])),
                             "seconds": round(time.perf_counter() - start, 1)})
                print(rows[-1], flush=True)
    write_json(args.out, {"device": device_name(device), "images": len(train), "step_size": args.step_size,
                          "standard_model": args.standard, "robust_model": args.robust, "rows": rows})


if __name__ == "__main__":
    main()
