"""Evaluation: judge a pretrained image encoder the way the ConVIRT paper does.

- :func:`linear_probe` (:mod:`.probe`) - frozen features, standardised, into
  scikit-learn's LogisticRegression (one binary classifier per column for multi-label),
  with the regularisation chosen on a validation split, at 1%, 10% and 100% of the
  training labels (:func:`sample_fraction`, :mod:`.labels`), repeated over seeds: a
  :class:`ProbeResult`.
- :func:`finetune` (:mod:`.finetune`) - the whole encoder and a linear head trained end
  to end in the C core at each label fraction and seed: a :class:`FinetuneResult`.
- :func:`retrieval` (:mod:`.retrieval`) - zero-shot image->image or text->image
  retrieval by cosine similarity, Precision@k per category: a :class:`RetrievalResult`;
  :func:`read_chexpert_8x200` (:mod:`.chexpert`) reads the paper's CheXpert 8x200
  protocol files.
- :func:`zero_shot` (:mod:`.zero_shot`) - zero-shot classification: each class named
  by one or more sentences (a prompt ensemble), or a positive/negative sentence pair per
  finding for multi-label chest findings; per-class scores and AUC: a
  :class:`ZeroShotResult`.
- :func:`tsne` (:mod:`.tsne`) - scikit-learn's t-SNE of image features, coloured by
  finding.

Features are the encoder's outputs (``encoder.encode(images)``, float32 (N, D)).
scikit-learn, matplotlib and pandas are imported when a function needs them. This is
library code: it never imports the Trainer, the experiments or the command line (the
paper's comparison table, which pretrains, is :mod:`convirt.experiments`).
"""

from .chexpert import CHEXPERT_LABELS, RetrievalSet, read_chexpert_8x200
from .finetune import FinetuneResult, finetune
from .labels import sample_fraction
from .probe import DEFAULT_CS, ProbeResult, linear_probe
from .retrieval import RetrievalResult, retrieval, retrieval_queries, top_k
from .tsne import tsne
from .zero_shot import ZeroShotResult, zero_shot

__all__ = [
    "CHEXPERT_LABELS",
    "DEFAULT_CS",
    "FinetuneResult",
    "ProbeResult",
    "RetrievalResult",
    "RetrievalSet",
    "ZeroShotResult",
    "finetune",
    "linear_probe",
    "read_chexpert_8x200",
    "retrieval",
    "retrieval_queries",
    "sample_fraction",
    "top_k",
    "tsne",
    "zero_shot",
]
