"""One timed workload like the cpu preset's: tiny-net training (fp32) and L2 PGD (bf16 autocast on CPU)."""
import json, os, sys, time, torch
from advfeat.runtime import bf16_on_cpu
from advfeat.throughput import measure_train_rate, measure_attack_rate
cpu = torch.device("cpu")
t = time.perf_counter()
train = measure_train_rate("tiny", 128, cpu, iterations=120)
with bf16_on_cpu(True):
    attack = measure_attack_rate("tiny", 500, cpu, steps=40)
print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY", "default"), "train_images_per_s": round(train, 1),
                  "attack_image_steps_per_s": round(attack, 1), "seconds": round(time.perf_counter() - t, 1)}))
