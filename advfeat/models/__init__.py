"""Models: the registry (registry.py) and one module per architecture family.

Importing this package imports every architecture module, which fills the registry.
"""

from advfeat.models import cpu_scale, densenet, googlenet, inceptionv3, resnet, small, vgg  # noqa: F401 (registry)
from advfeat.models.classifier import Classifier
from advfeat.models.registry import create_model, model_names, register_model
from advfeat.models.robustness_import import import_robustness, load_robustness
from advfeat.models.wrap import WrappedClassifier, robustbench_model, wrap
from advfeat.models.wrapped_folder import save_wrapped

__all__ = ["Classifier", "WrappedClassifier", "create_model", "import_robustness", "load_robustness", "model_names",
           "register_model", "robustbench_model", "save_wrapped", "wrap"]
