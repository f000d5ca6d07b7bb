# Type stub of the C extension convirt._core (csrc/py/): what type checkers and editors
# see of it. The docstrings and text signatures live in the C code; keep the two in step
# (tests/test_typing.py checks that every public name and method is here).
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeAlias, final

import numpy as np
import numpy.typing as npt

_Float32: TypeAlias = npt.NDArray[np.float32]
_Array: TypeAlias = npt.NDArray[Any]

class ConvirtError(Exception): ...
class NonFiniteError(ConvirtError, ValueError): ...
class StateError(ConvirtError, RuntimeError): ...

class LossResult(NamedTuple):
    loss: float
    image_to_text: float
    text_to_image: float
    accuracy_image_to_text: float
    accuracy_text_to_image: float
    grad_v: _Float32 | None
    grad_u: _Float32 | None
    grad_logit_scale: float | None

class ContrastiveLoss:
    temperature: float
    image_to_text_weight: float
    logit_scale: float
    @property
    def learnable_temperature(self) -> bool: ...
    @property
    def max_logit_scale(self) -> float: ...
    def __init__(
        self,
        temperature: float = 0.1,
        *,
        image_to_text_weight: float = 0.75,
        learnable_temperature: bool = False,
        max_logit_scale: float = 100.0,
    ) -> None: ...
    def __call__(
        self,
        v: _Array,
        u: _Array,
        *,
        grad_v: _Float32 | None = None,
        grad_u: _Float32 | None = None,
        compute_grad: bool = True,
    ) -> LossResult: ...
    def nt_xent(
        self, z: _Array, *, grad: _Float32 | None = None, compute_grad: bool = True
    ) -> LossResult: ...

class Encoder:
    training: bool
    freeze_backbone: bool
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None
    @property
    def kind(self) -> str: ...
    @property
    def feature_dim(self) -> int: ...
    @property
    def proj_dim(self) -> int: ...
    @property
    def in_channels(self) -> int | None: ...
    @property
    def flat_parameters(self) -> _Float32: ...
    @property
    def flat_gradients(self) -> _Float32: ...
    @property
    def flat_buffers(self) -> _Float32: ...
    @property
    def tensor_table(
        self,
    ) -> list[tuple[str, tuple[int, ...], int, int, bool, bool, str]]: ...
    @property
    def trainable_offset(self) -> int: ...
    def __init__(
        self,
        kind: str,
        config: dict[str, Any],
        *,
        proj_dim: int = 512,
        proj_hidden: int = 512,
        seed: int = 0,
    ) -> None: ...
    def forward(
        self,
        x: _Array,
        attention_mask: _Array | None = None,
        token_type_ids: _Array | None = None,
        *,
        features: bool = True,
        embeddings: bool = True,
        features_out: _Float32 | None = None,
        embeddings_out: _Float32 | None = None,
    ) -> tuple[_Float32 | None, _Float32 | None]: ...
    def backward(
        self,
        d_embeddings: _Array | None = None,
        d_features: _Array | None = None,
        *,
        input_grad: bool = False,
    ) -> _Float32 | None: ...
    def zero_grad(self) -> None: ...
    def set_batchnorm_reduce(
        self, fn: Callable[[npt.NDArray[np.float64]], object] | None, /
    ) -> None: ...
    def last_hidden_state(self) -> _Float32: ...

class ImageAugment:
    parameter_dtype: np.dtype[np.void]
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def size(self) -> int: ...
    @property
    def crop_scale(self) -> tuple[float, float] | None: ...
    @property
    def crop_ratio(self) -> tuple[float, float] | None: ...
    @property
    def flip(self) -> float | None: ...
    @property
    def degrees(self) -> tuple[float, float] | None: ...
    @property
    def translate(self) -> tuple[float, float] | None: ...
    @property
    def scale(self) -> tuple[float, float] | None: ...
    @property
    def brightness(self) -> tuple[float, float] | None: ...
    @property
    def contrast(self) -> tuple[float, float] | None: ...
    @property
    def blur_sigma(self) -> tuple[float, float] | None: ...
    @property
    def fill(self) -> float: ...
    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None: ...
    @property
    def seed(self) -> int: ...
    def __init__(
        self,
        size: int,
        *,
        crop_scale: Any,
        crop_ratio: Any,
        flip: Any,
        degrees: Any,
        translate: Any,
        scale: Any,
        brightness: Any,
        contrast: Any,
        blur_sigma: Any,
        fill: float = 0.0,
        normalization: Any = None,
        seed: int = 0,
    ) -> None: ...
    def __call__(
        self,
        images: _Array | Sequence[_Array],
        step: int = 0,
        *,
        out: _Float32 | None = None,
    ) -> _Float32: ...
    def sample_parameters(
        self, n: int, step: int = 0, *, first_index: int = 0
    ) -> npt.NDArray[np.void]: ...
    def apply(
        self,
        images: _Array | Sequence[_Array],
        parameters: npt.NDArray[np.void],
        *,
        out: _Float32 | None = None,
    ) -> _Float32: ...

class Adam:
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    decoupled_weight_decay: bool
    max_grad_norm: float | None
    @property
    def step_count(self) -> int: ...
    @property
    def exp_avg(self) -> _Float32: ...
    @property
    def exp_avg_sq(self) -> _Float32: ...
    @property
    def parameters(self) -> list[_Float32]: ...
    @property
    def gradients(self) -> list[_Float32]: ...
    @property
    def size(self) -> int: ...
    def __init__(
        self,
        parameters: Sequence[_Float32],
        gradients: Sequence[_Float32],
        *,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-6,
        decoupled_weight_decay: bool = False,
        max_grad_norm: float | None = None,
    ) -> None: ...
    def step(self, *, return_norm: bool = False) -> float | None: ...
    def zero_grad(self) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, d: dict[str, Any], /) -> None: ...

@final
class LinearHead:
    @property
    def flat_parameters(self) -> _Float32: ...
    @property
    def flat_gradients(self) -> _Float32: ...
    @property
    def weight(self) -> _Float32: ...
    @property
    def bias(self) -> _Float32: ...
    @property
    def weight_grad(self) -> _Float32: ...
    @property
    def bias_grad(self) -> _Float32: ...
    @property
    def in_dim(self) -> int: ...
    @property
    def out_dim(self) -> int: ...
    def __init__(self, in_dim: int, out_dim: int, *, seed: int = 0) -> None: ...
    def forward(self, x: _Float32, *, out: _Float32 | None = None) -> _Float32: ...
    def backward(
        self,
        d_logits: _Float32,
        x: _Float32,
        *,
        d_x: _Float32 | None = None,
        input_grad: bool = True,
    ) -> _Float32 | None: ...
    def zero_grad(self) -> None: ...

def config() -> dict[str, Any]: ...
def set_num_threads(n: int, /) -> None: ...
def get_num_threads() -> int: ...
def set_winograd(on: bool | int, /) -> None: ...
def get_winograd() -> bool | int: ...
def fma_peak(
    threads: int = 0, seconds: float = 0.5, bits: int = 0
) -> tuple[float, int]: ...
def gemm_kernel_peak(threads: int = 0, seconds: float = 0.5) -> tuple[float, int]: ...
def gemm(
    A: _Float32, B: _Float32, C: _Float32, alpha: float = 1.0, beta: float = 0.0
) -> None: ...
def random_uniform(seed: int, stream: int, index: int, /) -> float: ...
def softmax_cross_entropy(
    logits: _Float32,
    labels: npt.NDArray[np.int32],
    grad: _Float32 | None = None,
    *,
    compute_grad: bool = True,
) -> tuple[float, _Float32 | None]: ...
def binary_cross_entropy(
    logits: _Float32,
    targets: _Float32,
    grad: _Float32 | None = None,
    pos_weight: _Float32 | None = None,
    *,
    compute_grad: bool = True,
) -> tuple[float, _Float32 | None]: ...
def _resnet_profile(enable: bool | None = None, *, cpu_time: bool = False) -> Any: ...
