"""The `advfeat` command line: one subcommand per job, each a thin shell over a library call.

Every subcommand parses its flags here and calls one function elsewhere; bad input raises
UserError, printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from advfeat import __version__
from advfeat.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"advfeat: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _out_file(path: str, force: bool) -> Path:
    out = Path(path)
    if out.exists() and not force:
        raise UserError(f"--out {out} already exists; pass --force to overwrite it")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'eval.json'}")
    return out


def _add_data_flags(p, subset: bool = True) -> None:
    p.add_argument("--data", help="CIFAR-10 in any supported form (default: $ADVFEAT_DATA, else download)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed for subsets, order, augmentation, attacks")
    if subset:
        p.add_argument("--subset", type=_positive_int, help="train on N images (stratified by class, seeded)")
    p.add_argument("--test-subset", type=_positive_int, help="evaluate on N test images (stratified, seeded)")
    if subset:
        p.add_argument("--test-data", help="where a synthesized dataset takes its real test split "
                                           "(default: the source data recorded in it, else $ADVFEAT_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------- train


def _train(args: argparse.Namespace) -> None:
    from advfeat.pipelines import load_dataset
    from advfeat.runtime import resolve_device
    from advfeat.training import config_from_args, train

    config = config_from_args(args, augment=not args.no_augment)
    device = resolve_device(args.device)
    if args.resume and args.force:
        raise UserError("--resume and --force contradict each other; pick one")
    dataset = load_dataset(args.data, test_data=args.test_data, subset=args.subset, test_subset=args.test_subset,
                           seed=args.seed, verbose=not args.quiet)
    card = train(config, dataset, Path(args.out), device=device, resume=args.resume, force=args.force,
                 progress=not args.quiet)
    metrics = card["metrics"]
    print(f"trained {config.arch} for {card['epochs_done']} epochs: test accuracy "
          f"{metrics.get('test_accuracy', float('nan')):.4f}, {metrics.get('images_per_s')} images/s -> {args.out}")


def _add_train(sub) -> None:
    from advfeat.models import model_names
    from advfeat.pipelines import LOADERS
    from advfeat.training import SCHEDULES, TrainConfig

    d = TrainConfig.__dataclass_fields__
    p = sub.add_parser("train", help="train a classifier (standard or adversarial)")
    _add_data_flags(p)
    p.add_argument("--out", required=True, help="folder for weights, card, metrics and resume state")
    p.add_argument("--arch", default=d["arch"].default, help=f"one of {', '.join(model_names())}")
    p.add_argument("--epochs", type=int, default=d["epochs"].default)
    p.add_argument("--batch-size", type=int, default=d["batch_size"].default)
    p.add_argument("--lr", type=float, default=d["lr"].default)
    p.add_argument("--momentum", type=float, default=d["momentum"].default)
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"].default)
    p.add_argument("--schedule", choices=SCHEDULES, default=d["schedule"].default)
    p.add_argument("--lr-milestones", type=int, nargs="+", help="epochs where lr drops (default: 1/3, 2/3)")
    p.add_argument("--lr-gamma", type=float, default=d["lr_gamma"].default)
    p.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    p.add_argument("--loader", choices=LOADERS, default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--eval-every", type=_positive_int, default=1, help="test accuracy every N epochs")
    p.add_argument("--adv", choices=["l2", "linf"], help="adversarial training with PGD in this norm")
    p.add_argument("--eps", type=float, default=d["eps"].default, help="adversarial training radius")
    p.add_argument("--attack-steps", type=int, default=d["attack_steps"].default)
    p.add_argument("--attack-step-size", type=float, default=d["attack_step_size"].default)
    p.add_argument("--attack-start", choices=["none", "sphere", "ball", "radius", "box"],
                   default=d["attack_start"].default, help="random start of the training attack (default none)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--force", action="store_true", help="overwrite an existing run in --out")
    p.set_defaults(func=_train)


# --------------------------------------------------------------------------- eval


def _eval(args: argparse.Namespace) -> None:
    from advfeat.checkpoint import load_model
    from advfeat.evaluation import AttackSpec, accuracy_report, predict_tensor, robust_accuracy, split_tensors
    from advfeat.io import write_json
    from advfeat.pipelines import load_dataset
    from advfeat.runtime import resolve_device
    from advfeat.training import device_name

    out = _out_file(args.out, args.force) if args.out else None
    device = resolve_device(args.device)
    spec = None
    if args.attack:
        spec = AttackSpec(name=args.attack, steps=args.steps, step_size=args.step_size, restarts=args.restarts,
                          random_start=args.random_start, retire=not args.no_retire, share=not args.no_share,
                          batch_size=args.batch_size, compile=args.compile, cw_binary_steps=args.cw_binary_steps)
        if any(not e >= 0 for e in args.eps):
            raise UserError(f"eps must be >= 0, got {' '.join(map(str, args.eps))}")
    model, card = load_model(args.model, device)
    data = args.data or card.get("data", {}).get("path")
    dataset = load_dataset(data, test_subset=args.test_subset, seed=args.seed, verbose=not args.quiet)
    x, y = split_tensors(dataset.test, device)
    result = {"model": str(args.model), "arch": card["arch"], "robust_training": card.get("robust"),
              "data": dataset.source, "device": device_name(device),
              "clean": accuracy_report(predict_tensor(model, x, args.batch_size).cpu(), y.cpu(), dataset.classes)}
    print(f"{card['arch']} on {len(y)} test images: clean accuracy {result['clean']['accuracy']:.4f}")
    if spec is not None:
        result["attack"] = robust_accuracy(model, x, y, args.eps, spec, seed=args.seed, progress=not args.quiet)
        for row in result["attack"]["robust"]:
            speed = f", {row['images_per_s']:.0f} images/s, {row['image_steps_per_s']:.0f} image-steps/s" \
                if "images_per_s" in row else ""
            print(f"  {args.attack} eps {row['eps']}: robust accuracy {row['accuracy']:.4f}{speed}")
        for warning in result["attack"]["warnings"]:
            print(f"  warning: {warning}")
    if out:
        write_json(out, result)


def _add_eval(sub) -> None:
    from advfeat.evaluation import ATTACKS, AttackSpec

    d = AttackSpec.__dataclass_fields__
    p = sub.add_parser("eval", help="clean and robust accuracy of a trained model on the test split")
    _add_data_flags(p, subset=False)
    p.add_argument("--model", required=True, help="a model folder written by `advfeat train`")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--attack", choices=ATTACKS, help="also measure robust accuracy under this attack")
    p.add_argument("--eps", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="attack radii (default 0.25 0.5 1)")
    p.add_argument("--steps", type=_positive_int, default=d["steps"].default, help="PGD steps (CW: steps per c)")
    p.add_argument("--step-size", type=float, help="PGD step size (default 2.5 * eps / steps)")
    p.add_argument("--restarts", type=_positive_int, default=1)
    p.add_argument("--random-start", choices=["none", "sphere", "ball", "radius", "box"],
                   help="start distribution (default: none for 1 restart, else sphere (L2) / box (Linf))")
    p.add_argument("--no-retire", action="store_true", help="keep attacking examples already misclassified")
    p.add_argument("--no-share", action="store_true", help="attack every eps independently")
    p.add_argument("--cw-binary-steps", type=_positive_int, default=d["cw_binary_steps"].default)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="torch.compile the model inside the attack (default: on CUDA only)")
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"].default)
    p.set_defaults(func=_eval)


# --------------------------------------------------------------------------- synth


def _synth(args: argparse.Namespace) -> None:
    from advfeat.synthesis import SynthJob, SynthSettings, synthesize

    if args.gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {args.gpus}")
    settings = SynthSettings.preset(args.kind, steps=args.steps, step_size=args.step_size, eps=args.eps,
                                    batch_size=args.batch_size, shard_size=args.shard_size, storage=args.storage,
                                    seed=args.seed, subset=args.subset, retire=args.retire or None,
                                    compile=args.compile)
    job = SynthJob(settings, args.model, args.data, args.out, device=args.device, workers=args.gpus,
                   progress=not args.quiet)
    card = synthesize(job, force=args.force)
    stats = card["stats"]
    if settings.inversion:
        quality = (f"relative feature distance {stats['initial_distance']['mean']:.3f} -> "
                   f"{stats['final_distance']['mean']:.3f} (stored: {stats['stored_distance']['mean']:.3f})")
    else:
        quality = f"target success {stats['target_success']:.4f} (stored: {stats['stored_success']:.4f})"
    print(f"synthesized D_{args.kind} of {card['n']} images, this run {stats['wall_seconds']:.1f}s "
          f"(attack {stats['images_per_s']:.1f} images/s, {stats['image_steps_per_s']:.0f} image-steps/s): {quality} "
          f"-> {args.out}")


def _add_synth(sub) -> None:
    from advfeat.pipelines.synthesized import STORAGE
    from advfeat.synthesis import KINDS

    p = sub.add_parser("synth", help="synthesize D_R, D_NR, D_rand or D_det")
    p.add_argument("--kind", required=True, choices=KINDS, help="r, nr (inversion); rand, det (targeted PGD)")
    p.add_argument("--model", required=True, help="the model folder to synthesize with")
    p.add_argument("--data", help="the CIFAR-10 whose training images are transformed")
    p.add_argument("--out", required=True, help="the dataset folder (a restarted run resumes it)")
    p.add_argument("--gpus", type=int, default=1, help="worker processes, one per GPU (CPU: gloo workers)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--steps", type=_positive_int, help="default: 1000 (r, nr), 100 (rand, det)")
    p.add_argument("--step-size", type=float, help="default 0.1")
    p.add_argument("--eps", type=float, help="default: none (r, nr), 0.5 (rand, det)")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--shard-size", type=_positive_int, help="images per shard file (default 2000)")
    p.add_argument("--storage", choices=list(STORAGE), help="pixel storage (default float16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", type=_positive_int, help="synthesize from N training images (stratified)")
    p.add_argument("--retire", action="store_true", help="rand/det: stop an example at its first success")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="torch.compile the model (default: on CUDA only)")
    p.add_argument("--force", action="store_true", help="replace a different run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth)


# --------------------------------------------------------------------------- reproduce


def _reproduce(args: argparse.Namespace) -> None:
    import dataclasses

    from advfeat.presets import get_preset
    from advfeat.reproduce import reproduce

    if args.gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {args.gpus}")
    preset = get_preset(args.preset)
    overrides = {k: v for k, v in (("subset", args.subset), ("test_subset", args.test_subset)) if v is not None}
    if overrides:
        preset = dataclasses.replace(preset, **overrides)
    report = reproduce(preset, args.data, Path(args.out), device=args.device, gpus=args.gpus)
    print(f"report: {Path(args.out) / 'report.md'} ({report['total_seconds']:.0f}s on {report['device']})")
    for row in report["rows"]:
        paper = "" if row["paper_clean"] is None else f" (paper {100 * row['paper_clean']:.1f})"
        print(f"  {row['setting']:<34} clean {100 * row['clean']:5.1f}{paper}, "
              f"robust@0.25 {100 * (row.get('robust@0.25') or 0):5.1f}")


def _add_reproduce(sub) -> None:
    from advfeat.presets import PRESETS

    p = sub.add_parser("reproduce", help="the whole paper: train, synthesize, evaluate, report")
    p.add_argument("--preset", choices=list(PRESETS), default="smoke",
                   help="smoke (CPU, minutes), fast (one GPU), paper (the paper's ResNet-50 settings)")
    p.add_argument("--data", help="CIFAR-10 in any supported form")
    p.add_argument("--out", required=True, help="the reproduction folder (a rerun reuses finished stages)")
    p.add_argument("--gpus", type=int, default=1, help="synthesis workers (one per GPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--subset", type=_positive_int, help="override the preset's number of training images")
    p.add_argument("--test-subset", type=_positive_int, help="override the preset's number of test images")
    p.set_defaults(func=_reproduce)


# --------------------------------------------------------------------------- theory


def _theory(args: argparse.Namespace) -> None:
    from advfeat.theory.figures import run

    summary = run(Path(args.out), dims=args.dims, seed=args.seed)
    print(summary["headline"])


def _add_theory(sub) -> None:
    p = sub.add_parser("theory", help="the Gaussian model of Section 4")
    p.add_argument("model", choices=["gaussian"], help="which theoretical model")
    p.add_argument("--out", required=True, help="folder for the figures and the JSON of numbers")
    p.add_argument("--dims", type=int, default=10, help="dimension of the d-dimensional example")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_theory)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="advfeat", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"advfeat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_train(sub)
    _add_eval(sub)
    _add_synth(sub)
    _add_reproduce(sub)
    _add_theory(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"advfeat: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("advfeat: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
