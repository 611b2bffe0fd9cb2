"""The experiments of the paper's Distill discussion (2019), one module per comment.

    squares.py      Nakkiran (response 5): adversarial squares, overfitting makes "bug" examples
    wrong_labels.py Wallace (response 6): learning from incorrectly labelled data
    fourier.py      Gilmer & Hendrycks (response 1): Fourier-basis noise, filtered training, fog
    eigenfeatures.py Goh (response 3): useful non-robust linear features of truck vs frog
    layer_robustness.py the authors' reply to Nakano (response 4): R(f) per layer
    style_transfer.py Nakano (response 4): style transfer with each network, per layer (shown, not judged)
    common.py       training on tensors (advfeat.training), judging a claim with the comment's number

Each module has pure functions (the measurement), a stage body `*_stage(...) -> run(ctx) -> dict`
for `reproduce --extra distill`, and `judge_*` turning the stages' per-seed results into a
claim, its rule, an interval, a verdict and the comment's own number (common.judged).
docs/discussion.md says which comment each answers and how to run it.
"""
