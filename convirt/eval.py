"""``convirt.eval``: an alias kept for code written before evaluation became a package.
Every name it had still imports from here; new code imports from where each now lives:

- :mod:`convirt.evaluation` - the library: ``linear_probe``, ``finetune``,
  ``retrieval``, ``top_k``, ``retrieval_queries``, ``read_chexpert_8x200``, ``tsne``,
  ``zero_shot``,
  ``sample_fraction`` and their result types;
- :mod:`convirt.experiments` - what is built on the Trainer above it: ``compare``,
  ``ComparisonTable``, ``paper_table``, ``imagenet_encoder``, ``default_text_model``,
  ``PAPER_ROWS`` (loaded on first use, so that importing this alias does not import
  the Trainer).
"""

import importlib

from .evaluation import *
from .evaluation import __all__ as _library

# The library's names, then the experiments' (loaded by __getattr__ below).
__all__ = [  # noqa: PLE0604
    *_library,
    "ComparisonTable",
    "compare",
    "default_text_model",
    "imagenet_encoder",
    "paper_table",
]

# Where the names of the old module live now, library first; the experiments are
# imported only when one of their names is asked for.
_MODULES = (
    "convirt.evaluation.labels",
    "convirt.evaluation.results",
    "convirt.evaluation.probe",
    "convirt.evaluation.finetune",
    "convirt.evaluation.retrieval",
    "convirt.evaluation.chexpert",
    "convirt.evaluation.tsne",
    "convirt.evaluation.zero_shot",
    "convirt.experiments.compare",
    "convirt.experiments.paper_table",
)


def __getattr__(name):
    for module_name in _MODULES:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
