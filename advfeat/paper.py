"""The paper's numbers, each with its source, its precision and the setting it was measured in.

They are references, shown beside ours: never subtracted from a number of a different model.
Sources and confidence tags follow ../shared/reference/paper-notes.md:
    [V]     verified from a primary source (the paper's table or figure, author code or statement)
    [V-px]  read from the pixels of the paper's figure (about +-0.3 points)
    [3P]    a third-party quotation of the paper
A missing value is missing (None), never 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PAPER_SETTING = "ResNet-50, CIFAR-10, robust accuracy under L2 PGD at eps 0.25"


@dataclass(frozen=True)
class Reference:
    value: float  # a fraction in [0, 1] (a correlation for Figure 3's trend)
    source: str
    tag: str  # confidence tag (module docstring)
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# (model key, metric) -> the paper's number. Model keys are the report's rows.
PAPER: dict[tuple[str, str], Reference] = {
    ("standard", "clean"): Reference(0.953, "Table 1 (D row) and Figure 2b", "V"),
    ("standard", "robust@0.25"): Reference(
        0.0449, "'Table 7', quoted in constructed-datasets issue #8 and robustness issue #34; Figure 2b pixels 4.4-4.6",
        "3P", "the paper's attack is not stated; the robustness library's own standard ResNet-50 scores 8.66% "
              "(PGD-20) and 7.34% (PGD-100) at this eps (its README), so the paper's attack was probably stronger"),
    ("robust", "clean"): Reference(0.909, "Figure 2b pixels; the robustness README's eps-0.5 model: 90.83%", "V-px"),
    ("robust", "robust@0.25"): Reference(0.823, "Figure 2b pixels; the robustness README's eps-0.5 model: 82.34%",
                                         "V-px"),
    ("r", "clean"): Reference(0.841, "Figure 2b (84.10 px); constructed-datasets README: 84%", "V-px"),
    ("r", "robust@0.25"): Reference(0.4827, "Figure 2b (about 48.1-48.3 px); constructed-datasets README: 48%", "V-px"),
    ("nr", "clean"): Reference(0.8768, "Figure 2b (87.77 px); constructed-datasets README: 88%", "V-px"),
    ("nr", "robust@0.25"): Reference(0.0082, "Figure 2b (about 0.7-0.9 px); constructed-datasets README: 0%", "V-px"),
    ("rand", "clean"): Reference(0.633, "Table 1", "V"),
    ("rand", "robust@0.25"): Reference(0.0, "constructed-datasets README: 0% (rounded)", "V"),
    ("det", "clean"): Reference(0.437, "Table 1", "V"),
    ("det", "robust@0.25"): Reference(0.0, "constructed-datasets README: 0% (rounded)", "V"),
}

# Appendix D.6's cells could not be retrieved; a replication's numbers stand in, labelled so.
D6_REPLICATION = {
    "true": Reference(0.332, "Nakkiran, Distill discussion response 5 (ResNet-18, L2 PGD D_det)", "V"),
    "shifted": Reference(0.273, "Nakkiran, Distill discussion response 5 (ResNet-18, L2 PGD D_det)", "V"),
}

# Figure 3, read from the paper's figure by pixels: architecture -> (accuracy trained on D_det,
# transfer success from the ResNet-50 source).
FIGURE3 = {
    "vgg16": (0.279, 0.657),
    "inceptionv3": (0.394, 0.827),
    "resnet18": (0.408, 0.921),
    "densenet121": (0.417, 0.928),
    "resnet50": (0.447, 0.988),
}
FIGURE3_SOURCE = Reference(0.0, "Figure 3 pixels (about +-0.3 points); the source model itself is the ResNet-50 point",
                           "V-px")


# Restricted ImageNet (ImageNet_R), Table 1's other column (paper-notes 1.4): test accuracy on
# D of a standard ResNet-50 trained on D, D_rand and D_det. Its Figure 2b counterpart (D_R, D_NR,
# robust accuracy; Appendix D.8) could not be retrieved.
PAPER_RESTRICTED_IMAGENET: dict[tuple[str, str], Reference] = {
    ("standard", "clean"): Reference(0.966, "Table 1 (ImageNet_R column, D row)", "V"),
    ("rand", "clean"): Reference(0.879, "Table 1 (ImageNet_R column)", "V"),
    ("det", "clean"): Reference(0.644, "Table 1 (ImageNet_R column)", "V"),
}


CIFAR10, RESTRICTED_IMAGENET = "CIFAR-10", "Restricted ImageNet"
RESTRICTED_IMAGENET_FORMAT = "restricted-imagenet"  # Preset.data_format of Restricted ImageNet
# Each dataset's references, and the setting they were measured in (the report's reference column).
REFERENCES = {CIFAR10: PAPER, RESTRICTED_IMAGENET: PAPER_RESTRICTED_IMAGENET}
SETTINGS = {CIFAR10: PAPER_SETTING,
            RESTRICTED_IMAGENET: "ResNet-50, Restricted ImageNet, Table 1's test accuracy (no robust accuracy: its "
                                 "Figure 2b counterpart could not be retrieved)"}
NO_REFERENCE = "–"  # where the paper gives no number for a preset's data


def paper_dataset(preset: dict) -> str | None:
    """The dataset whose paper numbers are a preset's references: Restricted ImageNet for its reader;
    CIFAR-10 for a preset judged at CIFAR's eps 0.25 (every CIFAR preset; records from before presets
    declared paper_eps are CIFAR's); None otherwise, so that no CIFAR number passes for another's."""
    if preset.get("data_format") == RESTRICTED_IMAGENET_FORMAT:
        return RESTRICTED_IMAGENET
    return CIFAR10 if preset.get("paper_eps", 0.25) == 0.25 else None


def paper(key: str, metric: str, dataset: str | None = CIFAR10) -> Reference | None:
    """The paper's number for (model key, metric) on `dataset`; None where it has none."""
    return REFERENCES.get(dataset, {}).get((key, metric))
