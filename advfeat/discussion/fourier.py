"""Gilmer & Hendrycks, "Adversarial Example Researchers Need to Expand What is Meant by
'Robustness'" (Distill discussion, response 1): robustness beyond L_p, in frequency terms.

Three measurements:
1. Fourier-basis noise sensitivity (Yin et al. 2019, the comment's heat maps): the error rate
   of a model on x + r * s_c * U_(u,v), where U_(u,v) is the real 2-D Fourier basis image of
   frequency (u, v) (`fourier_basis`, L2 norm 1, the same for each colour channel c) and s_c a
   random sign per image and channel; pixels clipped to [0, 1]. The comment: r = 4 (per
   channel), 1,000 test images, for a standard, an adversarially trained and a
   Gaussian-augmented model. U_(u,v) = U_(-u,-v), so the map covers a half plane: rows
   v = 0..16, columns u = -15..16 (17 x 32; on the rows v = 0 and v = 16, (u, v) and (-u, v)
   are the same image, so those rows are mirror-symmetric). `stride` > 1 keeps every
   stride-th row and column (the cpu preset: 2, a 9 x 16 map).
2. Training and testing on filtered images (`lowpass`, `highpass`): frequencies are integer
   pairs (f_x, f_y) in [-16, 15]^2 (numpy's fftfreq times 32); the low-pass keeps
   max(|f_x|, |f_y|) <= cutoff, the high-pass is its complement x - lowpass(x). Both are
   orthogonal projections (idempotent; together the identity); cutoff 16 keeps every
   frequency, so lowpass(x, 16) = x. A cutoff outside (0, 16] is a UserError. High-passed
   images have mean 0; they are shown to the models on grey (+ 0.5, no clipping).
   The comment: > 50% top-1 on ImageNet with an extreme high-pass filter, > 30% low-pass.
3. A fog-like low-frequency corruption (`fog`): CIFAR-10-C's fog formula,
   clip((x + c * F) * m / (m + c)), m = max(x), with its plasma fractal F replaced by a random
   field of 1/|f|^decay spectrum scaled to [0, 1] (both are low-frequency random fields). The
   comment: adversarial training takes fog accuracy from 85.7% to 55.3% (ImageNet-C).

The Gaussian-augmented model here sees fixed noisy copies of its training images (one N(0,
sigma^2) draw per copy, `noisy_copies`), not fresh noise each batch: advfeat.training has no
per-batch noise option (a deviation; asking for one is in the report).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from advfeat.checkpoint import load_model
from advfeat.discussion.common import (
    Reference,
    difference_interval,
    judged,
    rate_interval,
    seeds_of,
    train_on_tensors,
    training_tensors,
)
from advfeat.errors import UserError
from advfeat.evaluation import predict_tensor
from advfeat.io import atomic_path
from advfeat.settings import TrainConfig
from advfeat.stats import shift

SIZE = 32
NYQUIST = SIZE // 2
# CIFAR-10-C's fog settings (c, wibble decay) by severity 1..5.
FOG_SEVERITIES = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))
_cpu_train = TrainConfig(arch="tiny", epochs=5, lr=0.2, batch_size=128, schedule="onecycle", augment="none",
                         eval_every=1000)  # the card's test accuracy after the last epoch only

REFERENCES = {
    "fourier-noise": Reference("adversarial training and Gaussian augmentation help at high frequencies and hurt at "
                               "low ones; the natural model is fragile except at the lowest frequencies",
                               "Gilmer & Hendrycks, response 1: CIFAR-10, noise of L2 norm 4 along each Fourier "
                               "basis vector, 1,000 test images (Yin et al. 2019's heat maps)"),
    "filtered": Reference("> 50% top-1 with an extreme high-pass filter, > 30% with an aggressive low-pass",
                          "Gilmer & Hendrycks, response 1: ImageNet-1K, trained and tested on filtered images"),
    "fog": Reference("85.7% -> 55.3% accuracy under fog with adversarial training",
                     "Gilmer & Hendrycks, response 1: ImageNet-C fog"),
}


def check_cutoff(cutoff: float) -> None:
    if not 0 < cutoff <= NYQUIST:
        raise UserError(f"filter cutoff must be in (0, {NYQUIST}] (a frequency of a {SIZE}x{SIZE} image), "
                        f"got {cutoff}")


def check_norm(norm: float) -> None:
    if not norm > 0:
        raise UserError(f"noise norm must be > 0, got {norm}")


# --------------------------------------------------------------------------- the basis


def fourier_basis(u: int, v: int, norm: float = 1.0, size: int = SIZE) -> torch.Tensor:
    """The real (size, size) image cos(2 pi (u i + v j) / size) scaled to L2 norm `norm`: its
    2-D DFT is nonzero only at the frequencies (u, v) and (-u, -v) (mod size). i is the row."""
    check_norm(norm)
    i = torch.arange(size, dtype=torch.float64).view(-1, 1)
    j = torch.arange(size, dtype=torch.float64).view(1, -1)
    image = torch.cos(2 * math.pi * (u * i + v * j) / size)
    return (norm * image / image.norm()).float()


def frequency_grid(stride: int = 1) -> tuple[list[int], list[int]]:
    """(rows v = 0..16, columns u = -15..16), every stride-th: the half plane of distinct bases."""
    if stride < 1:
        raise UserError(f"frequency stride must be at least 1, got {stride}")
    return list(range(0, NYQUIST + 1, stride)), list(range(-NYQUIST + 1, NYQUIST + 1, stride))


def add_basis_noise(x: torch.Tensor, basis: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x + s_c * basis per image and channel, s_c uniform in {-1, +1}, clipped to [0, 1]."""
    signs = torch.randint(0, 2, (len(x), x.shape[1], 1, 1), generator=generator).to(x) * 2 - 1
    return (x + signs * basis.to(x)).clamp(0, 1)


@torch.no_grad()
def fourier_error_map(model, x: torch.Tensor, y: torch.Tensor, norm: float, stride: int, seed: int,
                      batch_size: int = 500) -> dict:
    """Per frequency of the grid, per image: 1 where the model is wrong on the noisy image.
    Returns {"v": rows, "u": columns, "errors": (rows, columns, n) uint8 numpy}."""
    check_norm(norm)
    rows, columns = frequency_grid(stride)
    g = torch.Generator().manual_seed(seed)
    errors = np.zeros((len(rows), len(columns), len(y)), dtype=np.uint8)
    for a, v in enumerate(rows):
        for b, u in enumerate(columns):
            noisy = add_basis_noise(x, fourier_basis(u, v, norm), g)
            errors[a, b] = (predict_tensor(model, noisy, batch_size) != y).cpu().numpy()
    return {"v": rows, "u": columns, "errors": errors}


def band_of(rows: list[int], columns: list[int], low: int, high: int) -> np.ndarray:
    """Mask of the grid cells with low <= max(|u|, |v|) <= high."""
    radius = np.maximum(np.abs(np.asarray(columns))[None, :], np.asarray(rows)[:, None])
    return (radius >= low) & (radius <= high)


# --------------------------------------------------------------------------- filters


def frequency_radius(size: int = SIZE) -> torch.Tensor:
    """(size, size) max(|f_x|, |f_y|) of the DFT's frequency grid (fftfreq * size)."""
    f = torch.fft.fftfreq(size, d=1 / size).abs()
    return torch.maximum(f.view(-1, 1), f.view(1, -1))


def lowpass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Keep the frequencies with max(|f_x|, |f_y|) <= cutoff of each channel of x (..., 32, 32)."""
    check_cutoff(cutoff)
    keep = (frequency_radius(x.shape[-1]) <= cutoff).to(x.device)
    return torch.fft.ifft2(torch.fft.fft2(x.double()) * keep).real.to(x.dtype)


def highpass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """The complement of lowpass: the frequencies with max(|f_x|, |f_y|) > cutoff."""
    return x - lowpass(x, cutoff)


def filtered_images(x: torch.Tensor, kind: str, cutoff: float) -> torch.Tensor:
    """What a model trained on filtered images sees: lowpass(x), or highpass(x) + 0.5 (on grey)."""
    if kind == "low":
        return lowpass(x, cutoff)
    if kind == "high":
        return highpass(x, cutoff) + 0.5
    raise UserError(f"filter kind must be low or high, got {kind!r}")


# --------------------------------------------------------------------------- fog


def fog_field(n: int, decay: float, generator: torch.Generator, size: int = SIZE) -> torch.Tensor:
    """n random (size, size) fields with amplitude spectrum 1/|f|^decay (no DC), each scaled to [0, 1]."""
    f = torch.fft.fftfreq(size, d=1 / size)
    radius = torch.sqrt(f.view(-1, 1) ** 2 + f.view(1, -1) ** 2)
    amplitude = torch.where(radius > 0, radius.clamp(min=1) ** -decay, torch.zeros(()))
    noise = torch.randn(n, size, size, generator=generator) + 1j * torch.randn(n, size, size, generator=generator)
    field_ = torch.fft.ifft2(noise * amplitude).real
    low = field_.flatten(1).min(1).values.view(-1, 1, 1)
    high = field_.flatten(1).max(1).values.view(-1, 1, 1)
    return (field_ - low) / (high - low).clamp(min=1e-12)


def fog(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """CIFAR-10-C's fog formula with a 1/f field (module docstring); severity 1..5."""
    if severity not in range(1, len(FOG_SEVERITIES) + 1):
        raise UserError(f"fog severity must be 1..{len(FOG_SEVERITIES)}, got {severity}")
    c, decay = FOG_SEVERITIES[severity - 1]
    peak = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
    hazy = x + c * fog_field(len(x), decay, generator, x.shape[-1]).to(x).unsqueeze(1)
    return (hazy * peak / (peak + c)).clamp(0, 1)


# --------------------------------------------------------------------------- settings and stages


@dataclass(frozen=True)
class FourierSettings:
    norm: float = 4.0  # L2 norm of the basis noise per channel (the comment's r)
    images: int = 100  # test images of the heat maps (the comment: 1,000)
    stride: int = 2  # every stride-th frequency (the comment: 1)
    low_band: tuple[int, int] = (0, 4)  # max(|u|, |v|) ranges the claim compares
    high_band: tuple[int, int] = (10, 16)
    train_images: int = 2500  # training images of the Gaussian-augmented and the filtered models
    train: TrainConfig = field(default_factory=lambda: _cpu_train)
    gaussian_sigma: float = 0.1  # Gaussian augmentation's standard deviation (pixels in [0, 1])
    gaussian_copies: int = 2  # fixed noisy copies of each training image
    lowpass_cutoff: float = 4.0  # keeps max(|f|) <= 4: an aggressive low-pass
    highpass_cutoff: float = 12.0  # keeps max(|f|) > 12: an extreme high-pass
    fog_severity: int = 3
    fog_images: int = 2000  # test images under fog (at most the test set)
    batch_size: int = 500

    def __post_init__(self):
        check_norm(self.norm)
        check_cutoff(self.lowpass_cutoff)
        check_cutoff(self.highpass_cutoff)
        if not 1 <= self.fog_severity <= len(FOG_SEVERITIES):
            raise UserError(f"fog severity must be 1..{len(FOG_SEVERITIES)}, got {self.fog_severity}")
        if self.gaussian_sigma < 0 or self.gaussian_copies < 1 or self.images < 1 or self.train_images < 10:
            raise UserError("gaussian_sigma must be >= 0, gaussian_copies and images >= 1, train_images >= 10")


def noisy_copies(x: torch.Tensor, y: torch.Tensor, sigma: float, copies: int, seed: int):
    """Gaussian augmentation as data: `copies` noisy versions of each image (not clipped)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((copies, *x.shape), generator=g).to(x) * sigma
    return (x.unsqueeze(0) + noise).flatten(0, 1), y.repeat(copies)


def gaussian_model_stage(settings: FourierSettings, sources, seed: int, device: torch.device, log=None):
    """Stage body `gaussian-aug@seed`; reads no stage: the seed's settings.train_images
    training images of sources.train_data(seed), drawn by the seed, the test set for the model card. Trains the
    Gaussian-augmented model into <folder>/model (the folder a model stage has)."""

    def run(ctx) -> dict:
        start = time.perf_counter()
        x, y = noisy_copies(*training_tensors(sources, seed, settings.train_images, device),
                            settings.gaussian_sigma, settings.gaussian_copies, seed)
        model = train_on_tensors(replace(settings.train, seed=seed), (x, y), sources.test_tensors(),
                                 ctx.folder / "model", device, log=log)
        correct = predict_tensor(model, sources.test_tensors()[0], settings.batch_size) == sources.test_tensors()[1]
        return {"test_accuracy": float(correct.float().mean()), "seconds": round(time.perf_counter() - start, 1)}

    return run


def band_errors(heat: dict, band: tuple[int, int]) -> np.ndarray:
    """Per image: the error rate over the grid cells of the band."""
    mask = band_of(heat["v"], heat["u"], *band)
    return heat["errors"][mask].mean(0)


def fourier_heat_map_stage(settings: FourierSettings, model_stages: dict[str, str], sources, seed: int,
                           device: torch.device):
    """Stage body `fourier-noise@seed`; reads the model stages of `model_stages` (name -> stage
    id; the claim wants "standard", "robust" and "gaussian": the main standard and robust
    models, and gaussian_model_stage's). The first settings.images shared test images. Writes
    <folder>/heat-<name>.npy (rows v, columns u: the error rate); result per model: the map,
    its rows and columns, and per image the error rate in the low and the high band."""

    def run(ctx) -> dict:
        start = time.perf_counter()
        x, y = (t[:settings.images] for t in sources.test_tensors())
        result = {"settings": asdict(settings), "models": {}}
        ctx.folder.mkdir(parents=True, exist_ok=True)
        for name, stage in model_stages.items():
            model, _ = load_model(ctx.folder_of(stage) / "model", device)
            heat = fourier_error_map(model, x, y, settings.norm, settings.stride, seed, settings.batch_size)
            error_map = heat["errors"].mean(2)
            with atomic_path(ctx.folder / f"heat-{name}.npy") as temporary, open(temporary, "wb") as handle:
                np.save(handle, error_map)
            result["models"][name] = {"v": heat["v"], "u": heat["u"], "map": error_map.round(4).tolist(),
                                      "clean_error": float((predict_tensor(model, x, settings.batch_size) != y)
                                                           .float().mean()),
                                      "low_band": band_errors(heat, settings.low_band).round(4).tolist(),
                                      "high_band": band_errors(heat, settings.high_band).round(4).tolist()}
        result["seconds"] = round(time.perf_counter() - start, 1)
        return result

    return run


def filtered_training_stage(settings: FourierSettings, sources, seed: int, device: torch.device, log=None):
    """Stage body `filtered@seed`; reads no stage: settings.train_images of the seed's
    training images and the shared test set. Trains one model on low-passed and one on
    high-passed images (<folder>/{low, high}), each tested on the test set filtered alike;
    result per filter: cutoff, test accuracy, per-image correctness."""

    def run(ctx) -> dict:
        start = time.perf_counter()
        x, y = training_tensors(sources, seed, settings.train_images, device)
        x_test, y_test = sources.test_tensors()
        result = {}
        for kind, cutoff in (("low", settings.lowpass_cutoff), ("high", settings.highpass_cutoff)):
            test = (filtered_images(x_test, kind, cutoff), y_test)
            model = train_on_tensors(replace(settings.train, seed=seed), (filtered_images(x, kind, cutoff), y), test,
                                     ctx.folder / kind, device, log=log)
            correct = (predict_tensor(model, test[0], settings.batch_size) == y_test).int().cpu().numpy()
            result[kind] = {"cutoff": cutoff, "test_accuracy": float(correct.mean()), "correct": correct.tolist()}
        result["seconds"] = round(time.perf_counter() - start, 1)
        return result

    return run


def fog_stage(settings: FourierSettings, model_stages: dict[str, str], sources, seed: int, device: torch.device):
    """Stage body `fog@seed`; reads the model stages of `model_stages` (the claim wants
    "standard" and "robust"); the first settings.fog_images shared test images, fogged once
    (seeded by `seed`) for every model. Result per model: clean and fog accuracy, and per
    image clean-correct minus fog-correct (in {-1, 0, 1})."""

    def run(ctx) -> dict:
        start = time.perf_counter()
        x, y = (t[:settings.fog_images] for t in sources.test_tensors())
        foggy = fog(x, settings.fog_severity, torch.Generator().manual_seed(seed))
        result = {"severity": settings.fog_severity, "models": {}}
        for name, stage in model_stages.items():
            model, _ = load_model(ctx.folder_of(stage) / "model", device)
            clean = (predict_tensor(model, x, settings.batch_size) == y).int().cpu().numpy()
            fogged = (predict_tensor(model, foggy, settings.batch_size) == y).int().cpu().numpy()
            result["models"][name] = {"clean_accuracy": float(clean.mean()), "fog_accuracy": float(fogged.mean()),
                                      "drop": (clean - fogged).tolist()}
        result["seconds"] = round(time.perf_counter() - start, 1)
        return result

    return run


# --------------------------------------------------------------------------- the claims


def judge_fourier_noise(results: dict[int, dict], other: str = "robust") -> dict:
    """Adversarial training (or `other`: "gaussian") lowers the error at high frequencies and
    raises it at low ones, against the standard model, paired by seed (by image with one seed):
    error(other) - error(standard) < 0 in the high band and > 0 in the low band. The rival view
    (L_p robustness is robustness) predicts lower error everywhere."""
    seeds = seeds_of(results)
    parts = []
    settings = results[seeds[0]]["settings"]
    for band, direction in (("high_band", "below"), ("low_band", "above")):
        a = [np.asarray(results[s]["models"][other][band]) for s in seeds]
        b = [np.asarray(results[s]["models"]["standard"][band]) for s in seeds]
        interval = difference_interval([float(x.mean() - y.mean()) for x, y in zip(a, b)], a, b)
        low, high = settings[band]
        rule = (f"error ({other}) - error (standard) under L2-{settings['norm']:g} Fourier noise, "
                f"{low} <= max(|u|, |v|) <= {high}")
        parts.append((rule, interval, direction, 0.0))
    training = "Adversarial training" if other == "robust" else "Gaussian augmentation"
    return judged(f"fourier-noise-{other}", f"{training} trades high-frequency robustness for low-frequency fragility",
                  REFERENCES["fourier-noise"], parts)


def judge_filtered(results: dict[int, dict]) -> dict:
    """Models trained and tested on high-passed and on low-passed images stay well above chance
    (> 5 points). The rival view (models use only what humans see: low frequencies, shapes)
    would fail the high-pass part."""
    seeds = seeds_of(results)
    parts = []
    for kind in ("high", "low"):
        interval = rate_interval([results[s][kind]["test_accuracy"] for s in seeds],
                                 [np.asarray(results[s][kind]["correct"]) for s in seeds])
        cutoff = results[seeds[0]][kind]["cutoff"]
        keeps = f"max(|f|) > {cutoff:g}" if kind == "high" else f"max(|f|) <= {cutoff:g}"
        parts.append((f"test acc. trained and tested {kind}-passed ({keeps}) - chance (10%)",
                      shift(interval, 0.10), "above", 0.05))
    return judged("filtered-training", "Filtered images still teach: high-passed and low-passed both",
                  REFERENCES["filtered"], parts)


def judge_fog(results: dict[int, dict]) -> dict:
    """Adversarial training loses more accuracy under fog than standard training:
    (clean - fog accuracy) of the robust model minus that of the standard model > 0."""
    seeds = seeds_of(results)
    a = [np.asarray(results[s]["models"]["robust"]["drop"], dtype=float) for s in seeds]
    b = [np.asarray(results[s]["models"]["standard"]["drop"], dtype=float) for s in seeds]
    interval = difference_interval([float(x.mean() - y.mean()) for x, y in zip(a, b)], a, b)
    severity = results[seeds[0]]["severity"]
    return judged("fog", "Adversarial training hurts under a low-frequency corruption (fog)", REFERENCES["fog"],
                  [(f"accuracy drop under fog (severity {severity}): robust - standard", interval, "above", 0.0)])
