"""convirt: ConVIRT pretraining of medical image encoders from paired images and
reports (Zhang et al., 2020), on a C core built on BLIS and OpenMP.

The objects people use first:

- :class:`Encoder` - an image (ResNet) or text (BERT) tower with its projection head.
- :class:`ContrastiveLoss` - the paper's bidirectional contrastive loss, fused in C.

Configuration: :func:`show_config`, :func:`config`, :func:`set_num_threads`,
:func:`get_num_threads`.
"""

import warnings

from . import _core, data, datasets
from ._core import ContrastiveLoss, LossResult, get_num_threads, set_num_threads
from .encoder import Encoder

__version__ = "0.1.0"

__all__ = [
    "ContrastiveLoss",
    "Encoder",
    "LossResult",
    "config",
    "data",
    "datasets",
    "get_num_threads",
    "set_num_threads",
    "show_config",
]


def config():
    """What a bug report needs, as a dict: the BLIS version and library, the
    sub-configuration (kernel set) in use and why, the CPU features the choice looked
    at, thread counts, the OpenMP runtime, the compiler and its flags."""
    info = _core.config()
    info["convirt_version"] = __version__
    return info


def show_config():
    """Print :func:`config` as aligned ``key: value`` lines."""
    info = config()
    width = max(len(key) for key in info)
    for key, value in info.items():
        print(f"{key:>{width}}: {value}")


if "ignored" in _core.config()["blis_arch_reason"]:
    warnings.warn(_core.config()["blis_arch_reason"], RuntimeWarning, stacklevel=2)
