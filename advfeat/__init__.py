"""advfeat: regenerate 'Adversarial Examples Are Not Bugs, They Are Features' at scale."""

__version__ = "0.1.0"
