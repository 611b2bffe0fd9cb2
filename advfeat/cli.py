"""The `advfeat` command line: one subcommand per job, each a thin shell over a library call.

Every subcommand parses its flags here and calls one function elsewhere; bad input raises
UserError, printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from advfeat import __version__
from advfeat.errors import UserError
from advfeat.settings import AttackSpec, SynthSettings, TrainConfig


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"advfeat: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
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


_UNSET = object()


def _flag_type(name: str, annotation: str):
    """The argparse type of a settings field, from its annotation ("int | None", "float", ...)."""
    if annotation.startswith("int"):
        return int if name == "seed" else _positive_int
    return float if annotation.startswith("float") else str


def add_setting(p, cls, name: str, *, flag: str | None = None, default=_UNSET, help_extra: str = "", **kwargs):
    """A flag for one field of a settings dataclass: its help, choices and default come from
    the field (advfeat.settings is the one home of defaults)."""
    f = next(f for f in fields(cls) if f.name == name)
    default = f.default if default is _UNSET else default
    text = f.metadata["help"] + help_extra
    if default is not None and kwargs.get("action") not in ("store_true", "store_false"):
        text += f" (default: {default})"
    if kwargs.get("action") is None and "type" not in kwargs and f.metadata["choices"] is None:
        kwargs["type"] = _flag_type(name, str(f.type))
    if f.metadata["choices"] is not None and kwargs.get("action") is None:
        kwargs["choices"] = f.metadata["choices"]
    p.add_argument(flag or "--" + name.replace("_", "-"), default=default, help=text.replace("%", "%%"), **kwargs)


def _add_name_flag(p) -> None:
    p.add_argument("--name", help="one dataset inside the data folder: the authors' released d_robust_CIFAR, "
                                  "d_non_robust_CIFAR, drand_CIFAR or ddet_CIFAR, from their archive's root")


def _add_data_flags(p, subset: bool = True) -> None:
    p.add_argument("--data", help="CIFAR-10 (default: $ADVFEAT_DATA, else download) or another dataset: CIFAR-100, "
                                  "SVHN, image folders, Restricted ImageNet, ... (docs/data.md)")
    _add_name_flag(p)
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
    from advfeat.data import load_dataset
    from advfeat.runtime import resolve_device
    from advfeat.training import train

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    device = resolve_device(args.device)
    if args.resume and args.force:
        raise UserError("--resume and --force contradict each other; pick one")
    dataset = load_dataset(args.data, name=args.name, test_data=args.test_data, subset=args.subset,
                           test_subset=args.test_subset, seed=args.seed, verbose=not args.quiet)
    card = train(config, dataset, Path(args.out), device=device, resume=args.resume, force=args.force,
                 progress=not args.quiet)
    metrics = card["metrics"]
    print(f"trained {config.arch} for {card['epochs_done']} epochs: test accuracy "
          f"{metrics.get('test_accuracy', float('nan')):.4f}, {metrics.get('images_per_s')} images/s -> {args.out}")


def _add_train(sub) -> None:
    from advfeat.models import model_names

    p = sub.add_parser("train", help="train a classifier (standard or adversarial)")
    _add_data_flags(p)
    p.add_argument("--out", required=True, help="folder for weights, card, metrics and resume state")
    add_setting(p, TrainConfig, "arch", help_extra=f": {', '.join(model_names())}")
    for name in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule"):
        add_setting(p, TrainConfig, name)
    add_setting(p, TrainConfig, "lr_milestones", nargs="+")
    for name in ("lr_gamma", "augment", "loader"):
        add_setting(p, TrainConfig, name)
    add_setting(p, TrainConfig, "compile", action="store_true")
    for name in ("eval_every", "adv", "eps", "attack_steps", "attack_step_size", "attack_start"):
        add_setting(p, TrainConfig, name)
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--force", action="store_true", help="overwrite an existing run in --out")
    p.set_defaults(func=_train)


# --------------------------------------------------------------------------- eval


def _eval(args: argparse.Namespace) -> None:
    from advfeat.checkpoint import check_data_fits, load_model
    from advfeat.evaluation import accuracy_report, predict_tensor, robust_accuracy, split_tensors
    from advfeat.io import write_json
    from advfeat.data import load_dataset
    from advfeat.runtime import device_name, resolve_device

    out = _out_file(args.out, args.force) if args.out else None
    device = resolve_device(args.device)
    spec = None
    if args.attack:
        spec = AttackSpec(name=args.attack, steps=args.steps, step_size=args.step_size, restarts=args.restarts,
                          random_start=args.random_start, retire=args.retire, share=args.share,
                          batch_size=args.batch_size, compile=args.compile, cw_binary_steps=args.cw_binary_steps,
                          cw_lr=args.cw_lr, target_classes=args.target_classes, square=args.square,
                          square_queries=args.square_queries, version=args.version,
                          checkpoint_every=args.checkpoint_every)
        if any(not e >= 0 for e in args.eps):
            raise UserError(f"eps must be >= 0, got {' '.join(map(str, args.eps))}")
    model, card = load_model(args.model, device)
    data = args.data or card.get("data", {}).get("path")
    dataset = load_dataset(data, name=args.name, test_subset=args.test_subset, seed=args.seed, verbose=not args.quiet)
    check_data_fits(card, dataset.test.images.shape[1:])
    x, y = split_tensors(dataset.test, device)
    result = {"model": str(args.model), "arch": card["arch"], "robust_training": card.get("robust"),
              "data": dataset.source, "device": device_name(device),
              "clean": accuracy_report(predict_tensor(model, x, args.batch_size).cpu(), y.cpu(), dataset.classes)}
    print(f"{card['arch']} on {len(y)} test images: clean accuracy {result['clean']['accuracy']:.4f}")
    _appendix_d6(model, card, x, y, args.batch_size, result)
    if spec is not None:
        # AutoAttack saves per-example results beside --out as it goes; a rerun resumes from them.
        state = out.with_name(out.name + ".state.json") if out and spec.family == "autoattack" else None
        if state is not None and state.exists() and not args.quiet:
            print(f"  resuming from {state}")
        result["attack"] = robust_accuracy(model, x, y, args.eps, spec, seed=args.seed, progress=not args.quiet,
                                           state_path=state)
        for row in result["attack"]["robust"]:
            speed = f", {row['images_per_s']:.0f} images/s, {row['image_steps_per_s']:.0f} image-steps/s" \
                if "images_per_s" in row else ""
            print(f"  {spec.name} eps {row['eps']}: robust accuracy {row['accuracy']:.4f}{speed}")
        for warning in result["attack"]["warnings"]:
            print(f"  warning: {warning}")
    if out:
        write_json(out, result)
        if spec is not None and spec.family == "autoattack":
            out.with_name(out.name + ".state.json").unlink(missing_ok=True)  # the results are in --out now


def _appendix_d6(model, card: dict, x, y, batch_size: int, result: dict) -> None:
    """Appendix D.6 (evaluation.shifted_label_accuracy) when the model was trained on an advfeat dataset."""
    from advfeat.evaluation import predict_tensor, shifted_label_accuracy

    source = card.get("data", {})
    if source.get("format") != "advfeat-dataset":
        return
    shift, note, accuracy = shifted_label_accuracy(predict_tensor(model, x, batch_size), y, source.get("path", ""),
                                                   model.num_classes)
    if not shift:
        print(f"  Appendix D.6 skipped: {note}")
        result["appendix_d6"] = {"skipped": note}
        return
    result["appendix_d6"] = {"label_shift": shift, "shifted_accuracy": accuracy}
    print(f"  on the test set relabelled (y + {shift}) mod {model.num_classes} (Appendix D.6): {accuracy:.4f}")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="clean and robust accuracy of a trained model on the test split")
    _add_data_flags(p, subset=False)
    p.add_argument("--model", required=True, help="a model folder (advfeat train or import), or a robustness-library "
                                                   ".pt file (imported in memory; see advfeat import)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    add_setting(p, AttackSpec, "name", flag="--attack", default=None,
                help_extra="; also measure robust accuracy under it")
    p.add_argument("--eps", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="attack radii (default 0.25 0.5 1)")
    for name in ("steps", "step_size", "restarts", "random_start"):
        add_setting(p, AttackSpec, name)
    add_setting(p, AttackSpec, "retire", action=argparse.BooleanOptionalAction)
    add_setting(p, AttackSpec, "share", action=argparse.BooleanOptionalAction)
    for name in ("cw_binary_steps", "cw_lr", "version", "target_classes", "square_queries", "checkpoint_every",
                 "batch_size"):
        add_setting(p, AttackSpec, name)
    add_setting(p, AttackSpec, "square", action="store_true")
    add_setting(p, AttackSpec, "compile", action=argparse.BooleanOptionalAction)
    p.set_defaults(func=_eval)


# --------------------------------------------------------------------------- fourier


def _fourier(args: argparse.Namespace) -> None:
    """Gilmer & Hendrycks' heat map for a user's model: the error rate under noise of L2 norm
    --norm along each Fourier basis vector (every --stride-th frequency), on --images test
    images; with --cutoff, also the accuracy on low- and high-passed test images. Every input
    is checked before the model or the data are read."""
    import numpy as np

    from advfeat.checkpoint import load_model
    from advfeat.data import load_dataset
    from advfeat.discussion.fourier import (check_cutoff, check_norm, filtered_images, fourier_error_map,
                                            frequency_grid)
    from advfeat.evaluation import predict_tensor, split_tensors
    from advfeat.io import write_json
    from advfeat.report.figures import draw_heat_maps
    from advfeat.runtime import resolve_device

    check_norm(args.norm)
    frequency_grid(args.stride)
    if args.cutoff is not None:
        check_cutoff(args.cutoff)
    out = Path(args.out)
    if (out / "fourier.json").exists() and not args.force:
        raise UserError(f"{out / 'fourier.json'} already exists; pass --force to overwrite it")
    device = resolve_device(args.device)
    model, card = load_model(args.model, device)
    dataset = load_dataset(args.data or card.get("data", {}).get("path"), name=args.name, test_subset=args.images,
                           seed=args.seed, verbose=not args.quiet)
    x, y = split_tensors(dataset.test, device)
    heat = fourier_error_map(model, x, y, args.norm, args.stride, args.seed)
    error_map = heat["errors"].mean(2)
    result = {"model": str(args.model), "norm": args.norm, "stride": args.stride, "images": len(y),
              "u": heat["u"], "v": heat["v"], "error_map": error_map.round(4).tolist(),
              "clean_error": float((predict_tensor(model, x, 500) != y).float().mean())}
    if args.cutoff is not None:
        result["filtered_accuracy"] = {kind: float((predict_tensor(model, filtered_images(x, kind, args.cutoff), 500)
                                                    == y).float().mean()) for kind in ("low", "high")}
    out.mkdir(parents=True, exist_ok=True)
    draw_heat_maps({"model": {"u": heat["u"], "v": heat["v"], "map": error_map}, "norm": args.norm},
                   out / "heat_map.png")
    write_json(out / "fourier.json", result)
    print(f"mean error under L2-{args.norm:g} Fourier noise: {100 * float(np.mean(error_map)):.1f}% "
          f"(clean {100 * result['clean_error']:.1f}%) -> {out / 'heat_map.png'}")


def _add_fourier(sub) -> None:
    p = sub.add_parser("fourier", help="Fourier-noise error heat map of a model (Gilmer & Hendrycks, Distill)")
    p.add_argument("model", help="a model folder (advfeat train or import)")
    p.add_argument("--data", help="CIFAR-10 in any supported form (default: the model's training data)")
    _add_name_flag(p)
    p.add_argument("--out", required=True, help="a folder for heat_map.png and fourier.json")
    p.add_argument("--force", action="store_true", help="overwrite fourier.json if it exists")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test images drawn and of the noise's signs")
    p.add_argument("--norm", type=float, default=4.0, help="L2 norm of the noise per channel, > 0 (default 4: the "
                                                           "comment's)")
    p.add_argument("--images", type=_positive_int, default=100, help="test images (default 100; the comment: 1000)")
    p.add_argument("--stride", type=int, default=2, help="every N-th frequency (default 2; 1: all 17 x 32)")
    p.add_argument("--cutoff", type=float, help="also test on low-passed (max|f| <= C) and high-passed (> C) test "
                                                "images; C in (0, 16]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_fourier)


# --------------------------------------------------------------------------- style


def _style(args: argparse.Namespace) -> None:
    """Nakano's style transfer with a user's model: a content image (a file, or the --image-th
    test image of --data) restyled after --style (a file, or the procedural texture), one
    picture per style layer alone and one with all of them. Every input is checked before the
    optimisation starts."""
    import dataclasses

    import torch

    from advfeat.checkpoint import load_model
    from advfeat.discussion.style_transfer import (MULTI, StyleSettings, choose_layers, load_pictures, read_image,
                                                   save_pictures, style_grid, wave_texture)
    from advfeat.io import write_json
    from advfeat.models.registry import check_input_size, model_names
    from advfeat.report.figures import draw_style_grid
    from advfeat.runtime import resolve_device

    settings = StyleSettings(contents=1, steps=args.steps, style_weight=args.style_weight,
                             max_layers=args.max_layers)
    if (args.content is None) == (args.data is None):
        raise UserError("give the content image as --content FILE or as --data with --image N")
    out = Path(args.out)
    if (out / "style.json").exists() and not args.force:
        raise UserError(f"{out / 'style.json'} already exists; pass --force to overwrite it")
    device = resolve_device(args.device)
    model, card = load_model(args.model, device)
    if args.content is not None:
        content = read_image(args.content)
    else:
        from advfeat.data import load_dataset

        test = load_dataset(args.data, name=args.name, verbose=not args.quiet).test
        if not 0 <= args.image < len(test):
            raise UserError(f"--image must be in [0, {len(test) - 1}], got {args.image}")
        content = torch.from_numpy(test.images[args.image]).float() / 255
    height, width = content.shape[-2:]
    if card.get("arch") in model_names():  # a wrapped model's own module: its forward pass will tell
        check_input_size(card["arch"], tuple(content.shape))
    style = read_image(args.style, (height, width)) if args.style else wave_texture(height, width)
    layers = tuple(x for x in (args.layers or "").split(",") if x)
    style_layers, content_layer = choose_layers(model, (height, width), layers, args.content_layer or "",
                                                args.max_layers)
    content, style = content[None].to(device), style.to(device)
    grid = style_grid(model, content, style, settings, style_layers, content_layer)
    out.mkdir(parents=True, exist_ok=True)
    pictures = {"content": content, "style": style[None]} | {f"model|{k}": x for k, (x, _) in grid.items()}
    save_pictures(out / "style.npz", pictures)
    draw_style_grid(load_pictures(out / "style.npz"), out / "style_transfer.png")
    write_json(out / "style.json", {"model": str(args.model), "style": args.style or "wave_texture(seed 0)",
                                    "content": args.content or f"{args.data} test image {args.image}",
                                    "style_layers": style_layers, "content_layer": content_layer,
                                    "columns": list(grid), "settings": dataclasses.asdict(settings)})
    print(f"style transfer at {', '.join(style_layers)} (content {content_layer}; {MULTI}: one more picture) -> "
          f"{out / 'style_transfer.png'}")


def _add_style(sub) -> None:
    p = sub.add_parser("style", help="neural style transfer with a model, per layer (Nakano, Distill)")
    p.add_argument("model", help="a model folder (advfeat train or import)")
    p.add_argument("--content", help="the content image (PNG or JPEG)")
    p.add_argument("--data", help="or take the content image from this dataset's test split (any supported form)")
    _add_name_flag(p)
    p.add_argument("--image", type=int, default=0, help="with --data: which test image (default 0)")
    p.add_argument("--style", help="the style image, resized to the content's size (default: a procedural texture "
                                   "of coloured gratings)")
    p.add_argument("--layers", help="style layers, comma-separated (default: up to --max-layers feature-map layers, "
                                    "evenly spaced); a wrong name lists the valid ones")
    p.add_argument("--content-layer", help="the content layer (default: the second-to-last style layer)")
    p.add_argument("--max-layers", type=_positive_int, default=5, help="style layers chosen when none are named")
    p.add_argument("--steps", type=_positive_int, default=200, help="L-BFGS iterations per picture (default 200)")
    p.add_argument("--style-weight", type=float, default=1.0, help="style loss weight (content: 1; both relative)")
    p.add_argument("--out", required=True, help="a folder for style_transfer.png, style.npz and style.json")
    p.add_argument("--force", action="store_true", help="overwrite style.json if it exists")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_style)


# --------------------------------------------------------------------------- synth


def _synth(args: argparse.Namespace) -> None:
    from advfeat.synthesis import SynthJob, synthesize

    if args.gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {args.gpus}")
    if Path(args.model).is_file():
        raise UserError(f"synth needs a model folder; import {args.model} first: "
                        f"advfeat import robustness {args.model} --arch NAME --out DIR")
    settings = SynthSettings.of(args.kind, **{f.name: getattr(args, f.name) for f in fields(SynthSettings)
                                              if f.name != "kind" and hasattr(args, f.name)})
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
    p = sub.add_parser("synth", help="synthesize D_R, D_NR, D_rand or D_det")
    add_setting(p, SynthSettings, "kind", default=None, required=True)
    p.add_argument("--model", required=True, help="the model folder to synthesize with")
    p.add_argument("--data", help="the CIFAR-10 whose training images are transformed")
    p.add_argument("--out", required=True, help="the dataset folder (a restarted run resumes it)")
    p.add_argument("--gpus", type=int, default=1, help="worker processes, one per GPU (CPU: gloo workers)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (one worker)")
    # Unset flags take the kind's defaults (advfeat.settings.KIND_DEFAULTS), named in each help.
    add_setting(p, SynthSettings, "steps", default=None)
    add_setting(p, SynthSettings, "step_size", default=None, help_extra=" (default: 0.1)")
    add_setting(p, SynthSettings, "eps", default=None)
    add_setting(p, SynthSettings, "keep", default=None)
    for name in ("norm", "targets", "start", "batch_size", "shard_size", "storage", "seed", "subset"):
        add_setting(p, SynthSettings, name)
    add_setting(p, SynthSettings, "fake_relu", action=argparse.BooleanOptionalAction)
    add_setting(p, SynthSettings, "retire", action="store_true")
    add_setting(p, SynthSettings, "compile", action=argparse.BooleanOptionalAction)
    p.add_argument("--force", action="store_true", help="replace a different run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth)


# --------------------------------------------------------------------------- reproduce


def _default_preset() -> str:
    """cpu (the paper's claims in under 30 minutes) without a GPU, fast with one."""
    import torch

    return "fast" if torch.cuda.is_available() else "cpu"


def _reproduce(args: argparse.Namespace) -> None:
    import dataclasses

    from advfeat.presets import get_preset
    from advfeat.reproduce import dry_run, reproduce

    preset = get_preset(args.preset or _default_preset())
    overrides = {k: v for k, v in (("subset", args.subset), ("test_subset", args.test_subset), ("seeds", args.seeds),
                                   ("first_seed", args.first_seed)) if v is not None}
    if overrides:  # the preset checks them (--seeds 0, a negative --first-seed: one line)
        preset = dataclasses.replace(preset, **overrides)
    extras = tuple(args.extra or ())
    if args.dry_run:
        plan = dry_run(preset, args.data, Path(args.out), device=args.device, gpus=args.gpus, extras=extras,
                       log=lambda message: print(message, file=sys.stderr))
        _print_plan(plan)
        return
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    report = reproduce(preset, args.data, Path(args.out), device=args.device, gpus=args.gpus, extras=extras, log=log)
    print(f"report: {Path(args.out) / 'report.md'} ({report['total_seconds']:.0f}s on {report['device']})")
    for claim in report["claims"] + report.get("distill_claims", []):
        print(f"  {claim['verdict']:<14} {claim['statement']}")


def _print_plan(plan: dict) -> None:
    done = sum(r["status"] == "done" for r in plan["stages"])
    print(f"preset {plan['preset']} on {plan['device']}: {len(plan['stages'])} stages, {done} done; rates from "
          f"{plan['rates'].get('source', 'advfeat doctor')}")
    print(f"  {'stage':<28} {'status':<8} {'work':<7} {'arch':<12} {'passes':>14} {'est. s':>9}")
    for r in plan["stages"]:
        print(f"  {r['stage']:<28} {r['status']:<8} {r['work']:<7} {r['arch'] or '':<12} {r['passes']:>14,.0f} "
              f"{r['seconds']:>9.1f}")
    hours = plan["total_seconds"] / 3600
    print(f"estimated time left: {plan['total_seconds']:.0f} s ({hours:.1f} h)")


def _add_reproduce(sub) -> None:
    from advfeat.presets import EXTRAS, PRESETS

    p = sub.add_parser("reproduce", help="the whole paper: train, synthesize, evaluate, judge the claims, report")
    p.add_argument("--preset", choices=list(PRESETS),
                   help="smoke (CI, minutes), cpu (the claims on a laptop, < 30 min), fast (one GPU), paper (the "
                        "paper's ResNet-50 settings), restricted-imagenet (the paper's second dataset: an ImageNet "
                        "folder, GPUs) (default: cpu without a GPU, fast with one)")
    p.add_argument("--data", help="CIFAR-10 in any supported form (restricted-imagenet: an ImageNet folder of "
                                  "train/ and val/ wnid folders)")
    p.add_argument("--out", required=True, help="the reproduction folder (a rerun reuses finished stages)")
    p.add_argument("--gpus", type=int, default=1, help="synthesis workers, one per GPU")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seeds", type=int, help="override the preset's number of seeds")
    p.add_argument("--first-seed", type=int, help="run seeds S, S+1, ... (default: the preset's; the cpu preset "
                                                  "starts after the seeds used while tuning it)")
    p.add_argument("--subset", type=_positive_int, help="override the preset's number of training images")
    p.add_argument("--test-subset", type=_positive_int, help="override the preset's number of test images")
    p.add_argument("--extra", action="append", choices=EXTRAS,
                   help="optional experiments: distill (the Distill discussion's: robust-feature leakage, "
                        "non-transferable examples, L-inf datasets, D_R from noise, Fourier noise, filtered "
                        "training, fog, Goh's eigenfeatures, layer robustness, style transfer, adversarial squares, "
                        "wrong labels; "
                        "docs/discussion.md); repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="print the stages, which are done, their work and an estimated time; run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress lines (the verdicts are still printed)")
    p.set_defaults(func=_reproduce)


# --------------------------------------------------------------------------- doctor


def _doctor(args: argparse.Namespace) -> None:
    """Exit status 0 when every check that ran passed, 1 when one failed."""
    from advfeat.doctor import default_out_dir, run_doctor, summary_table

    out = args.out or default_out_dir(args.device)
    log = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    report = run_doctor(out, data=args.data, device=args.device, quick=args.quick, log=log, checks=args.check)
    print(summary_table(report))
    print(f"{'all checks that ran passed' if report['ok'] else 'SOME CHECKS FAILED'} "
          f"({report['seconds']:.0f}s) -> {Path(out) / 'doctor.md'}")
    if not report["ok"]:
        raise SystemExit(1)


def _add_doctor(sub) -> None:
    from advfeat.doctor import RUN_ORDER

    p = sub.add_parser("doctor", help="check this machine and every accelerated path; measure throughput")
    p.add_argument("--out", help="folder for doctor.json and doctor.md (default: results/doctor-<device>)")
    p.add_argument("--data", help="CIFAR-10 in any supported form (default: synthetic images, made on the spot)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--quick", action="store_true", help="smaller sizes; on a CPU also skip the ~25 s compile check")
    p.add_argument("--check", action="append", choices=RUN_ORDER,
                   help="run only this check (repeatable; default: all of them)")
    p.add_argument("--quiet", action="store_true", help="no progress lines (the summary table is still printed)")
    p.set_defaults(func=_doctor)


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


# --------------------------------------------------------------------------- import


def _import(args: argparse.Namespace) -> None:
    from advfeat.models.robustness_import import import_robustness

    if args.source == "robustbench":
        return _import_robustbench(args)
    card = import_robustness(args.file, args.arch, args.out, eps=args.eps, norm=args.norm, force=args.force)
    source, norm = card["source_file"], card["normalization"]
    mean, std = ([round(v, 4) for v in norm[k]] for k in ("mean", "std"))
    print(f"imported {card['arch']} ({card['num_classes']} classes, epoch {source['epoch']}) from {args.file} "
          f"(sha256 {source['sha256'][:16]}...); normalizer mean {mean} std {std}"
          f"{'' if norm['matches_cifar10'] else ' (not CIFAR-10’s: the model uses it)'} -> {args.out}")


def _import_robustbench(args: argparse.Namespace) -> None:
    from advfeat.models import robustbench_model, save_wrapped

    if args.arch or args.eps is not None:
        raise UserError("--arch and --eps are for robustness-library files; a RobustBench model is named by NAME")
    model = robustbench_model(args.file, args.model_dir, args.dataset, args.threat_model, args.weights)
    card = save_wrapped(args.out, model, force=args.force)
    print(f"saved RobustBench's {args.file} ({card['num_classes']} classes, weights sha256 "
          f"{card['origin']['weights_sha256'][:16]}...) -> {args.out}")


def _add_import(sub) -> None:
    from advfeat.models.robustness_import import IMPORTABLE

    p = sub.add_parser("import", help="turn another library's checkpoint into an advfeat model folder")
    p.add_argument("source", choices=["robustness", "robustbench"],
                   help="the library that wrote FILE (robustness: MadryLab's, the paper's code), or robustbench: "
                        "a RobustBench model by NAME, its weights already on disk")
    p.add_argument("file", metavar="FILE|NAME", help="the checkpoint file, e.g. cifar_l2_0_5.pt (read without running "
                                                      "code from it); for robustbench the model's name")
    p.add_argument("--arch", choices=IMPORTABLE, help="its architecture (default: the one its keys fit); the "
                                                      "library's ImageNet resnet18/resnet50 are resnet18_imagenet/"
                                                      "resnet50_imagenet")
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--eps", type=float, help="the radius it was adversarially trained at, for its card (0: standard)")
    p.add_argument("--norm", choices=["l2", "linf"], default="l2", help="the norm of --eps (default: l2)")
    p.add_argument("--model-dir", default="models", help="robustbench: its model_dir (default: models)")
    p.add_argument("--dataset", default="cifar10", help="robustbench: cifar10, cifar100 or imagenet (default: cifar10)")
    p.add_argument("--threat-model", default="Linf", help="robustbench: Linf, L2 or corruptions (default: Linf)")
    p.add_argument("--weights", help="robustbench: the weights file (default: MODEL_DIR/DATASET/THREAT_MODEL/NAME.pt)")
    p.add_argument("--force", action="store_true", help="replace a model already in --out")
    p.set_defaults(func=_import)


# --------------------------------------------------------------------------- export, inspect


def _export(args: argparse.Namespace) -> None:
    from advfeat.data import load_dataset
    from advfeat.data.export import export_dataset

    dataset = load_dataset(args.dataset, name=args.name, test_data=args.test_data, subset=args.subset,
                           test_subset=args.test_subset, seed=args.seed, verbose=not args.quiet,
                           need_test=args.format != "authors")
    out = export_dataset(dataset, args.format, Path(args.out))
    n_test = f" + {len(dataset.test)} test" if args.format != "authors" else ""
    print(f"exported {len(dataset.train)} train{n_test} images, {dataset.num_classes} classes, "
          f"as {args.format} -> {out}")


def _add_export(sub) -> None:
    from advfeat.data.export import EXPORT_FORMATS

    p = sub.add_parser("export", help="write a dataset losslessly as the authors' CIFAR_ims/CIFAR_lab, an image "
                                      "folder or an .npz")
    p.add_argument("dataset", help="the dataset: any form advfeat reads (advfeat synth output included)")
    _add_name_flag(p)
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                   help="authors: CIFAR_ims + CIFAR_lab (train split) as the robustness library reads them; "
                        "imagefolder: train/ and test/ PNG class folders (uint8 data only); npz: dataset.npz")
    p.add_argument("--out", required=True, help="a new folder to write")
    p.add_argument("--test-data", help="where a train-only dataset takes its real test split (imagefolder, npz)")
    p.add_argument("--subset", type=_positive_int, help="export N training images (stratified by class, seeded)")
    p.add_argument("--test-subset", type=_positive_int, help="export N test images (stratified, seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_export)


def _inspect(args: argparse.Namespace) -> None:
    from advfeat.data import load_dataset
    from advfeat.data.dataset_report import dataset_report, image_grid, model_agreement, write_png
    from advfeat.io import write_json

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out is not None and (out / "inspect.json").exists() and not args.force:
        raise UserError(f"{out / 'inspect.json'} already exists; pass --force to overwrite it")
    dataset = load_dataset(args.dataset, name=args.name, test_data=args.test_data, subset=args.subset,
                           seed=args.seed, verbose=not args.quiet, need_test=False)
    report = dataset_report(dataset)
    if args.model:
        from advfeat.checkpoint import load_model
        from advfeat.runtime import resolve_device

        device = resolve_device(args.device)
        model, _ = load_model(args.model, device)
        report["model"] = {"path": str(args.model)} | model_agreement(model, dataset, device, args.batch_size)
    _print_inspection(report)
    if out is not None:
        write_png(image_grid(dataset.train, dataset.num_classes), out / "grid.png")
        write_json(out / "inspect.json", report)
        print(f"-> {out / 'inspect.json'}, {out / 'grid.png'}")


def _print_inspection(report: dict) -> None:
    train = report["train"]
    pixels = train["pixels"]
    print(f"{report['source'].get('format')}: {train['n']} train images {tuple(pixels['shape'])} {pixels['dtype']}, "
          f"pixels in [{pixels['min']:.3f}, {pixels['max']:.3f}], {len(report['classes'])} classes, "
          f"{pixels['duplicates']} exact duplicates, {pixels['non_finite']} non-finite values")
    if report["source"].get("digest"):
        print(f"  content sha256 (pixels and labels): {report['source']['digest']}")
    for split in ("train", "test"):
        if split in report:
            counts = report[split]["per_class"].values()
            print(f"  {split}: {min(counts)}..{max(counts)} images a class (rarest/commonest "
                  f"{report[split]['min_over_max']:.2f})"
                  + (f"; EMPTY: {', '.join(report[split]['empty_classes'][:5])}" if report[split]["empty_classes"]
                     else ""))
    if "model" in report:
        m = report["model"]
        print(f"  model {m['path']}: {m['meaning']} {m['agreement']:.4f} on {m['n']} images")


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="check a dataset: class balance, an image grid, a model's agreement")
    p.add_argument("dataset", help="the dataset: any form advfeat reads (advfeat synth output included)")
    _add_name_flag(p)
    p.add_argument("--model", help="a model folder: how often its prediction equals the label (for D_rand/D_det: "
                                   "the target success)")
    p.add_argument("--out", help="folder for inspect.json and grid.png (default: print only)")
    p.add_argument("--force", action="store_true", help="overwrite inspect.json and grid.png in --out")
    p.add_argument("--subset", type=_positive_int, help="inspect N training images (stratified, seeded)")
    p.add_argument("--test-data", help="also report the class balance of this real test split")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--batch-size", type=_positive_int, default=500, help="the model's batch size (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of --subset")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="advfeat", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"advfeat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_train(sub)
    _add_eval(sub)
    _add_synth(sub)
    _add_fourier(sub)
    _add_style(sub)
    _add_reproduce(sub)
    _add_doctor(sub)
    _add_theory(sub)
    _add_export(sub)
    _add_inspect(sub)
    _add_import(sub)
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
