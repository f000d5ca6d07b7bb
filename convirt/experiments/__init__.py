"""Experiments: programs built on the library, above it (the library never imports
them).

- :func:`compare` / :class:`ComparisonTable` (:mod:`.compare`) - the ConVIRT paper's
  comparison of image encoders on one labelled dataset: linear probe, fine-tuning and
  retrieval columns.
- :func:`paper_table` (:mod:`.paper_table`) - pretrains the paper's rows (random init,
  ImageNet init, SimCLR, ConVIRT) with the Trainer, then compares them.
- :func:`run_demo` (:mod:`.demo`) - ``convirt demo``: ConVIRT end to end on built-in
  synthetic data.
"""

from .compare import ComparisonTable, compare
from .paper_table import PAPER_ROWS, default_text_model, imagenet_encoder, paper_table

__all__ = [
    "PAPER_ROWS",
    "ComparisonTable",
    "compare",
    "default_text_model",
    "imagenet_encoder",
    "paper_table",
]
