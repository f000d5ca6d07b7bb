"""convirt: ConVIRT pretraining of medical image encoders from paired images and
reports (Zhang et al., 2020), on a C core built on BLIS and OpenMP.

The objects people use first:

- :class:`Encoder` - an image (ResNet) or text (BERT) tower with its projection head.
- :class:`ContrastiveLoss` - the paper's bidirectional contrastive loss, fused in C.
- :class:`Trainer` - ConVIRT (or SimCLR) pretraining with checkpoints that survive a
  crash; :func:`load_run` - a trained run's encoders and settings in one line.
- :class:`ImageAugment` - the paper's random image transforms, in C, with the paper's
  ranges as defaults (:func:`paper_augment`, :func:`mild_augment`, :func:`eval_augment`).
- :class:`Adam` - Adam / AdamW over flat buffers, with :class:`ReduceLROnPlateau` and
  :class:`WarmupCosine` schedules.
- :func:`softmax_cross_entropy`, :func:`binary_cross_entropy` - the fine-tuning losses
  (forward and backward fused in C).

Configuration: :func:`show_config`, :func:`config`, :func:`set_num_threads`,
:func:`get_num_threads`, :func:`set_winograd` (3x3 convolutions through Winograd's
F(2x2, 3x3), on by default, or F(4x4, 3x3) on request; docs/NUMERICS.md gives their
errors), :func:`get_winograd`.

Data: ``convirt.datasets`` (where pairs come from), ``convirt.prepared`` (the memmap
cache), ``convirt.loader`` (BatchLoader), ``convirt.images``, ``convirt.reports``
(sections and sentences), ``convirt.text`` (tokenization).

Evaluation: ``convirt.evaluation`` (linear probes, fine-tuning, retrieval, t-SNE) and
``convirt.sklearn`` (ImageEmbedder, TextEmbedder), loaded on first use since they
import scikit-learn; ``convirt.eval`` is the older name of the first. Above the
library: ``convirt.experiments`` (the paper's comparison table, the demo) and
``convirt.cli`` (the ``convirt`` command). docs/ARCHITECTURE.md draws the layers.
"""

import importlib.util
import os
import warnings

# OpenMP threads that wait by spinning stall every parallel region when another process
# holds a core (measured: a training step 3x slower on a loaded 2-core machine). Spin
# briefly, then sleep, unless the user chose a policy. This must precede loading the
# OpenMP runtime, which happens with the extension below.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

# In a checkout whose extension is not built, the imports below would end in "No module
# named 'convirt._core'" raised from a module deep inside, or in "cannot import name
# '_core' from partially initialized module 'convirt' (most likely due to a circular
# import)": say what is missing and how to build it. (find_spec does not load it.)
if importlib.util.find_spec(f"{__name__}._core") is None:
    raise ModuleNotFoundError(
        "the C extension convirt._core is not built: run `make build` "
        "(or pip install -e .)",
        name=f"{__name__}._core",
    )

from . import _core, data, datasets, reports, text  # noqa: F401
from ._core import (
    Adam,
    ContrastiveLoss,
    LossResult,
    binary_cross_entropy,
    get_num_threads,
    get_winograd,
    set_num_threads,
    set_winograd,
    softmax_cross_entropy,
)
from .augment import ImageAugment, eval_augment, mild_augment, paper_augment
from .encoder import Encoder
from .errors import (
    CheckpointError,
    ConvirtError,
    DataFileError,
    ImageDecodeError,
    NonFiniteError,
    StateError,
    TrainingDiverged,
)
from .runs import load_run
from .schedules import ReduceLROnPlateau, WarmupCosine
from .trainer import Callback, Trainer, TrainerConfig

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "Callback",
    "CheckpointError",
    "ContrastiveLoss",
    "ConvirtError",
    "DataFileError",
    "Encoder",
    "ImageAugment",
    "ImageDecodeError",
    "LossResult",
    "NonFiniteError",
    "ReduceLROnPlateau",
    "StateError",
    "Trainer",
    "TrainerConfig",
    "TrainingDiverged",
    "WarmupCosine",
    "binary_cross_entropy",
    "config",
    "data",
    "datasets",
    "eval_augment",
    "get_num_threads",
    "get_winograd",
    "load_run",
    "mild_augment",
    "paper_augment",
    "set_num_threads",
    "set_winograd",
    "show_config",
    "softmax_cross_entropy",
]

# Loaded on first use: evaluation, eval and sklearn import scikit-learn when used
# (seconds), experiments import the Trainer's users, cli the command line.
_LAZY = ("cli", "eval", "evaluation", "experiments", "sklearn")


def __getattr__(name):
    # They stay out of __all__: `from convirt import *` must not shadow eval().
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def config():
    """What a bug report needs, as a dict: the BLIS version and library, the
    sub-configuration (kernel set) in use and why, the CPU features the choice looked
    at, thread counts, the OpenMP runtime, the compiler and its flags, and the MPI rank
    and world size (convirt.distributed; 0 and 1 when not launched by mpirun)."""
    info = _core.config()
    info["omp_wait"] = (
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
        if "OMP_WAIT_POLICY" in os.environ
        else f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}"
    )
    info["convirt_version"] = __version__
    from .distributed import describe

    info.update(describe())  # MPI rank and world size (1 without mpirun)
    info["threads_per_rank"] = _core.get_num_threads()
    info["winograd"] = _core.get_winograd()
    return info


def show_config():
    """Print :func:`config` as aligned ``key: value`` lines."""
    info = config()
    width = max(len(key) for key in info)
    for key, value in info.items():
        print(f"{key:>{width}}: {value}")


if "ignored" in _core.config()["blis_arch_reason"]:
    warnings.warn(_core.config()["blis_arch_reason"], RuntimeWarning, stacklevel=2)
