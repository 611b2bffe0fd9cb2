"""The restricted-imagenet preset end to end on fake ImageNet folders, every stage shrunk to
seconds: checks that the 9-class pipeline runs and that its report speaks of the data's classes,
eps 3 and chance 1/9, never CIFAR-10's. Not a result: random 32x32 images, one-epoch models.

    python scripts/restricted_imagenet_toy.py OUT      # about 4 minutes on 2 CPU cores
"""

import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_more_data import write_imagenet  # noqa: E402  (1000 wnid folders, the filled ones with PNGs)

from advfeat.data.restricted_imagenet import RESTRICTED_IMAGENET_RANGES  # noqa: E402
from advfeat.presets import get_preset  # noqa: E402
from advfeat.reproduce import reproduce  # noqa: E402


def toy_preset():
    """The preset with one epoch, batch 32, 2-3 attack steps and tiny evaluation subsets."""
    p = get_preset("restricted-imagenet")

    def short(config):
        return replace(config, epochs=1, batch_size=32, lr_milestones=[])

    return replace(p, subset=None, test_subset=None, seeds=2, standard=short(p.standard),
                   robust=replace(short(p.robust), attack_steps=2),
                   synth={k: replace(s, steps=3, batch_size=32, shard_size=64) for k, s in p.synth.items()},
                   train_on={k: short(c) for k, c in p.train_on.items()},
                   attack=replace(p.attack, steps=2, batch_size=32),
                   strong_attack=replace(p.strong_attack, steps=2, target_classes=2, batch_size=32),
                   cw_attack=replace(p.cw_attack, steps=2, cw_binary_steps=1, batch_size=32),
                   strong_subset=8, transfer_train=short(p.transfer_train), transfer_images=16)


def main(out: Path) -> None:
    data = out / "imagenet"
    if not data.exists():  # three ImageNet classes of each super-class, 4 images each; one class outside
        write_imagenet(data, {low + k: 4 for low, _ in RESTRICTED_IMAGENET_RANGES for k in range(3)} | {29: 2},
                       size=32)
    start = time.perf_counter()
    report = reproduce(toy_preset(), str(data), out / "run", device="cpu", log=lambda m: None)
    text = (out / "run" / "report.md").read_text()
    for cifar in ("airplane", "50,000", "eps 0.25", "chance (10%)"):
        assert cifar not in text, cifar
    print(f"{len(report['stages'])} stages in {time.perf_counter() - start:.0f} s; report: {out / 'run' / 'report.md'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
