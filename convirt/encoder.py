"""convirt.Encoder: an image (ResNet) or text (BERT) tower with its projection head.

The math runs in the C type ``convirt._core.Encoder``; this subclass adds the
constructors, batching with progress bars, named parameter views and checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._core import Encoder as _CoreEncoder
from ._io import atomic_write, read_safetensors
from .augment import (  # noqa: F401 (the constants: convirt.encoder.IMAGENET_MEAN etc.)
    GRAY_MEAN,
    GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    resnet_normalization,
)
from .embeddings import encode_dataset as _encode_dataset
from .embeddings import is_dataset as _is_dataset
from .encoder_spec import ENCODER_FORMAT, _is_finite, _is_number, _short
from .encoder_spec import POOLING as _POOLING
from .encoder_spec import check_shapes as _check_shapes
from .encoder_spec import check_spec as _check_spec
from .errors import CheckpointError
from .images import FLOAT_IMAGE_RANGE, channels_last, check_float_range  # noqa: F401 (re-export)

if TYPE_CHECKING:  # pragma: no cover
    from .embeddings import Embeddings

__all__ = ["Encoder"]

# The types of the public signatures.
PathLike = str | os.PathLike
Normalization = tuple[Sequence[float], Sequence[float]]
# An image batch (N, H, W[, C]) uint8 or float32, strings, or int32 input_ids (N, T).
EncoderInput = npt.ArrayLike | Sequence[str]

# Keys that PyTorch checkpoints carry and an encoder does not have.
_IGNORED_SUFFIXES = ("num_batches_tracked", "embeddings.position_ids")
_IGNORED_PREFIXES = ("fc.", "pooler.", "cls.", "classifier.", "head.fc.")
_STRIPPED_PREFIXES = ("module.", "bert.", "model.")

# The default normalisation of a ResNet tower (ImageNet's, or its grey level for one
# channel) is convirt.augment's resnet_normalization.


def _stored_shape(shape, layout):
    """Shape of a tensor in the order the core stores it."""
    if layout == "KRSC":
        k, c, r, s = shape
        return (k, r, s, c)
    return tuple(shape)


def _to_stored(array, layout):
    if layout == "KRSC":
        return np.transpose(array, (0, 2, 3, 1))
    return array


def _to_torch(array, layout):
    """A copy in PyTorch's layout (never a view: for 1x1 kernels the transpose alone
    would already be contiguous)."""
    if layout == "KRSC":
        array = np.transpose(array, (0, 3, 1, 2))
    return np.array(array, order="C", copy=True)


class Encoder(_CoreEncoder):
    """An encoder tower: a backbone f (ResNet or BERT) and a projection head g.

    Build one with :meth:`resnet18`, :meth:`resnet34`, :meth:`resnet50`,
    :meth:`bert` or :meth:`from_pretrained` (a Hugging Face BERT directory), or
    :meth:`from_checkpoint` (a file written by :meth:`save`, or a training run's
    folder).

    - ``encode(x)`` -> backbone features h, float32 (N, feature_dim), eval mode.
    - ``embed(x)`` -> projected embeddings g(h), float32 (N, proj_dim), eval mode.
    - ``forward`` / ``backward`` / ``zero_grad`` / ``train()`` / ``eval()`` for training.
    - ``parameters()`` / ``gradients()`` -> dicts of NumPy views into the flat buffers.

    Images are (N, H, W) or (N, H, W, C) uint8 or float32 arrays (memmaps too), read in
    place; uint8 is scaled by 1/255, then ``(x - mean) / std`` per channel
    (``normalization``). Float images hold intensities in [0, 1]: ``encode`` and
    ``embed`` refuse values outside FLOAT_IMAGE_RANGE (-0.5, 1.5), which are another
    scale (0-255 most often), and read PyTorch's (N, C, H, W) through a transposed view
    (no copy). ``forward`` takes its input as it is. Text is a list of strings (with a
    tokenizer) or int32 ``input_ids`` with an ``attention_mask``.
    """

    def __init__(
        self,
        kind: str,
        config: Mapping[str, Any],
        *,
        proj_dim: int = 512,
        proj_hidden: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__(
            kind, dict(config), proj_dim=proj_dim, proj_hidden=proj_hidden, seed=seed
        )
        self._spec: dict[str, Any] = {
            "kind": kind,
            "config": dict(config),
            "proj_dim": proj_dim,
            "proj_hidden": proj_hidden,
            "seed": seed,
        }
        self.tokenizer = None
        self.max_length = 128

    # ---- constructors -------------------------------------------------------------

    @classmethod
    def _resnet(cls, depth, in_channels, proj_dim, proj_hidden, seed, normalization):
        encoder = cls(
            "resnet",
            {"depth": depth, "in_channels": in_channels},
            proj_dim=proj_dim,
            proj_hidden=proj_hidden,
            seed=seed,
        )
        if normalization is None:
            normalization = resnet_normalization(in_channels)
        encoder.normalization = (tuple(normalization[0]), tuple(normalization[1]))
        return encoder

    @classmethod
    def resnet18(
        cls,
        in_channels: int = 1,
        *,
        proj_dim: int = 512,
        proj_hidden: int = 512,
        seed: int = 0,
        normalization: Normalization | None = None,
    ) -> Encoder:
        """ResNet-18 image encoder (features: 512)."""
        return cls._resnet(18, in_channels, proj_dim, proj_hidden, seed, normalization)

    @classmethod
    def resnet34(
        cls,
        in_channels: int = 1,
        *,
        proj_dim: int = 512,
        proj_hidden: int = 512,
        seed: int = 0,
        normalization: Normalization | None = None,
    ) -> Encoder:
        """ResNet-34 image encoder (features: 512)."""
        return cls._resnet(34, in_channels, proj_dim, proj_hidden, seed, normalization)

    @classmethod
    def resnet50(
        cls,
        in_channels: int = 1,
        *,
        proj_dim: int = 512,
        proj_hidden: int = 512,
        seed: int = 0,
        normalization: Normalization | None = None,
    ) -> Encoder:
        """ResNet-50 image encoder, ConVIRT's f_v (features: 2048)."""
        return cls._resnet(50, in_channels, proj_dim, proj_hidden, seed, normalization)

    @classmethod
    def bert(
        cls,
        *,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        pooling: str = "max",
        freeze_layers: int = 0,
        proj_dim: int = 512,
        proj_hidden: int = 512,
        seed: int = 0,
        tokenizer: Any = None,
        max_length: int = 128,
    ) -> Encoder:
        """A BERT text encoder (Hugging Face BertModel, post-LayerNorm) pooled over the
        valid tokens of its last layer: ``pooling`` is 'max' (ConVIRT), 'mean' or 'cls'.
        ``freeze_layers=k`` freezes the embeddings and the first k layers (ConVIRT:
        6 of 12): they run forward only, keep nothing, and get no gradient.

        Input: int32 ``input_ids`` and ``attention_mask`` (N, T) (and optionally
        ``token_type_ids``), read in place, or strings with ``tokenizer``. Position ids
        are the index in the padded row, as in Hugging Face. Padded tokens never enter
        the computation, so results do not depend on the padding length.
        There is no dropout: a training forward computes the eval-mode function (as
        Hugging Face's ``model.eval()``), with gradients. ``last_hidden_state()`` gives
        the last layer's token outputs of the latest forward, (N, T, hidden_size)."""
        if pooling not in _POOLING:
            raise ValueError(f"pooling must be one of {sorted(_POOLING)}, got {pooling!r}")
        if _is_number(layer_norm_eps) and not _is_finite(layer_norm_eps):
            raise ValueError(
                f"layer_norm_eps must be a finite number > 0, got {layer_norm_eps!r}"
            )
        config = {
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads,
            "intermediate_size": intermediate_size,
            "max_position_embeddings": max_position_embeddings,
            "type_vocab_size": type_vocab_size,
            "layer_norm_eps": layer_norm_eps,
            "pooling": _POOLING[pooling],
            "freeze_layers": freeze_layers,
        }
        encoder = cls("bert", config, proj_dim=proj_dim, proj_hidden=proj_hidden, seed=seed)
        encoder.tokenizer = tokenizer
        encoder.max_length = max_length
        return encoder

    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        *,
        pooling: str = "max",
        freeze_layers: int | None = None,
        proj_dim: int = 512,
        proj_hidden: int = 512,
        seed: int = 0,
        max_length: int = 128,
    ) -> Encoder:
        """A text encoder from a Hugging Face BERT directory (config.json,
        model.safetensors, tokenizer.json or vocab.txt). ``freeze_layers`` defaults to
        half of the layers, as in ConVIRT. A folder written by :meth:`save_pretrained`
        (either tower) is rebuilt exactly as saved, and the keywords are not used."""
        from .export import is_pretrained_folder, load_pretrained
        from .text import load_pretrained_bert

        if is_pretrained_folder(path):
            given = {
                "pooling": pooling,
                "freeze_layers": freeze_layers,
                "proj_dim": proj_dim,
                "proj_hidden": proj_hidden,
                "seed": seed,
                "max_length": max_length,
            }
            default = {
                "pooling": "max",
                "freeze_layers": None,
                "proj_dim": 512,
                "proj_hidden": 512,
                "seed": 0,
                "max_length": 128,
            }
            changed = sorted(k for k in given if given[k] != default[k])
            if changed:
                raise ValueError(
                    f"{path} was written by save_pretrained and is rebuilt as saved; "
                    f"{', '.join(changed)} cannot change it (set them on the encoder after)"
                )
            return load_pretrained(cls, path)

        return load_pretrained_bert(
            cls,
            path,
            pooling=pooling,
            freeze_layers=freeze_layers,
            proj_dim=proj_dim,
            proj_hidden=proj_hidden,
            seed=seed,
            max_length=max_length,
        )

    @classmethod
    def from_checkpoint(
        cls, path: PathLike, *, which: str = "best", kind: str | None = None
    ) -> Encoder:
        """An encoder rebuilt from a file written by :meth:`save`, or from a training
        run: ``path`` may also be a run folder of ``convirt pretrain``, a Trainer's
        checkpoint directory or the sub-directory of one save, from which the
        ``{kind}_encoder.safetensors`` of the ``which`` checkpoint is read ('best',
        else 'last' when the run kept no best; any case; see
        :func:`convirt.checkpoint.find_checkpoint`). ``kind``: 'image' (the default
        for a folder) or 'text'; when given, the encoder read must be of that kind.

        Every metadata field is checked for type and range, and the sizes against the
        file's own tensors, before the encoder is built; every tensor must be float32.
        Anything else raises :class:`convirt.checkpoint.CheckpointError` (a ValueError)
        naming the file and the field; a missing file raises FileNotFoundError, a
        folder without a checkpoint CheckpointError saying what was looked for."""
        if kind not in (None, "image", "text"):
            raise ValueError(f"kind must be 'image', 'text' or None, got {kind!r}")
        if os.path.isdir(path):
            from .checkpoint import find_checkpoint

            _, directory = find_checkpoint(path, which)
            path = os.path.join(directory, f"{kind or 'image'}_encoder.safetensors")
            if not os.path.exists(path):
                raise CheckpointError(
                    f"checkpoint {directory} has no {os.path.basename(path)}"
                    + (" (a SimCLR run trains no text encoder)" if kind == "text" else "")
                )
        tensors, metadata = read_safetensors(path)
        if "convirt_encoder" not in metadata:
            raise CheckpointError(
                f"{path} is not a convirt encoder checkpoint (no "
                "'convirt_encoder' metadata); use load() on an encoder "
                "built with the right architecture"
            )
        wrong = sorted(name for name, array in tensors.items() if array.dtype != np.float32)
        if wrong:
            raise CheckpointError(
                f"{path}: {len(wrong)} tensor(s) are not float32, e.g. {wrong[0]!r} is "
                f"{tensors[wrong[0]].dtype}; a convirt encoder checkpoint holds float32 "
                "tensors only"
            )
        encoder = cls._from_metadata(
            metadata, str(path), {name: array.shape for name, array in tensors.items()}
        )
        if kind is not None and encoder.kind != kind:
            raise CheckpointError(
                f"{path} holds an encoder of kind {encoder.kind!r}; expected {kind!r}"
            )
        try:
            encoder.load_state_dict(tensors)
        except ValueError as error:
            raise CheckpointError(f"{path}: {error}") from error
        return encoder

    @classmethod
    def _from_metadata(cls, metadata, where="the encoder metadata", shapes=None):
        """A freshly initialized encoder with the architecture written by _metadata(),
        every field checked first (and the sizes against `shapes`, the file's tensor
        shapes, when given); CheckpointError naming `where` and the field otherwise."""
        if metadata.get("format", ENCODER_FORMAT) != ENCODER_FORMAT:
            raise CheckpointError(
                f"{where}: metadata field 'format' is "
                f"{_short(metadata['format'])}; expected "
                f"{ENCODER_FORMAT!r}"
            )
        try:
            spec = json.loads(metadata["convirt_encoder"])
        except (TypeError, ValueError) as error:
            raise CheckpointError(
                f"{where}: metadata field 'convirt_encoder' is not valid JSON ({error})"
            ) from None
        full = _check_spec(spec, where)
        if shapes is not None:
            _check_shapes(spec, full, shapes, where)
        tokenizer = None
        if spec.get("tokenizer"):
            from .text import tokenizer_from_json

            try:
                tokenizer = tokenizer_from_json(spec["tokenizer"])
            except ValueError as error:
                raise CheckpointError(
                    f"{where}: metadata field 'tokenizer' is {error}"
                ) from None
        try:
            encoder = cls(
                spec["kind"],
                spec["config"],
                proj_dim=spec["proj_dim"],
                proj_hidden=spec["proj_hidden"],
                seed=spec.get("seed", 0),
            )
            if spec.get("normalization") is not None:
                encoder.normalization = tuple(tuple(x) for x in spec["normalization"])
        except (ValueError, TypeError, KeyError, OverflowError) as error:
            raise CheckpointError(
                f"{where}: the metadata describes no encoder the core can build: {error}"
            ) from error
        encoder.tokenizer = tokenizer
        encoder.max_length = spec.get("max_length", 128)
        return encoder

    # ---- modes ------------------------------------------------------------------------

    def train(self, mode: bool = True) -> Encoder:
        """Training mode: forward keeps what backward needs and batch norm uses (and
        updates) batch statistics. Returns self."""
        self.training = bool(mode)
        return self

    def eval(self) -> Encoder:
        """Evaluation mode (running statistics, nothing kept for backward). Returns self."""
        self.training = False
        return self

    # ---- named views ------------------------------------------------------------------

    def _views(self, flat, want_buffers):
        views = {}
        params, buffers = self.flat_parameters if flat is None else flat, self.flat_buffers
        for name, shape, offset, size, is_buffer, frozen, layout in self.tensor_table:
            if is_buffer and not want_buffers:
                continue
            source = buffers if is_buffer else params
            views[name] = source[offset : offset + size].reshape(
                _stored_shape(shape, layout)
            )
        return views

    def parameters(self) -> dict[str, np.ndarray]:
        """name -> float32 view into the parameter buffer (and the running statistics),
        with PyTorch state_dict names. Convolution weights are stored GEMM-ready as
        (K, R, S, C); :meth:`state_dict` gives PyTorch's (K, C, R, S)."""
        return self._views(None, True)

    def gradients(self) -> dict[str, np.ndarray]:
        """name -> float32 view into the gradient buffer (trainable tensors only)."""
        grads = self.flat_gradients
        return {
            name: view
            for name, view in self._views(grads, False).items()
            if not self._is_frozen(name)
        }

    def _is_frozen(self, name):
        return any(row[0] == name and row[5] for row in self.tensor_table)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (excluding running statistics)."""
        if trainable_only:
            return sum(
                row[3]
                for row in self.tensor_table
                if not row[4]
                and not row[5]
                and (not self.freeze_backbone or row[0].startswith("projection."))
            )
        return sum(row[3] for row in self.tensor_table if not row[4])

    def state_dict(self) -> dict[str, np.ndarray]:
        """name -> a copy of each tensor in PyTorch's layout."""
        out = {}
        views = self.parameters()
        for name, shape, offset, size, is_buffer, frozen, layout in self.tensor_table:
            out[name] = _to_torch(views[name], layout)
        return out

    def load_state_dict(
        self, state_dict: Mapping[str, npt.ArrayLike], strict: bool = True
    ) -> None:
        """Copy tensors in by name. Accepts this encoder's own names and those of
        torchvision / timm ResNets and Hugging Face BERTs (prefixes such as 'module.' or
        'bert.' are stripped; fc, pooler and num_batches_tracked are ignored).
        Convolution weights may be in PyTorch's (K, C, R, S) layout. Missing, unexpected
        or wrongly-shaped tensors, tensors that are not floating point and values that
        are not finite raise a ValueError that lists them, and nothing is changed."""
        table = {row[0]: row for row in self.tensor_table}
        given = {}
        for key, value in state_dict.items():
            name = key
            for prefix in _STRIPPED_PREFIXES:
                if name.startswith(prefix) and name[len(prefix) :] in table:
                    name = name[len(prefix) :]
            if name not in table and (
                name.endswith(_IGNORED_SUFFIXES)
                or name.startswith(_IGNORED_PREFIXES)
                or any(
                    name.startswith(p + q)
                    for p in _STRIPPED_PREFIXES
                    for q in _IGNORED_PREFIXES
                )
            ):
                continue
            given[name] = (key, np.asarray(value))
        missing = sorted(set(table) - set(given))
        unexpected = sorted(given[name][0] for name in set(given) - set(table))
        wrong = []
        for name in set(given) & set(table):
            shape, layout = tuple(table[name][1]), table[name][6]
            array = given[name][1]
            if array.shape != shape and array.shape != _stored_shape(shape, layout):
                wrong.append(f"{name}: expected {shape}, got {array.shape}")
            elif not np.issubdtype(array.dtype, np.floating):
                wrong.append(
                    f"{name}: dtype {array.dtype}, expected floating point (float32)"
                )
            elif not np.all(np.isfinite(array)):
                wrong.append(f"{name}: contains NaN or Inf")
            elif (
                array.dtype.itemsize > 4
                and array.size
                and (np.abs(array).max() > np.finfo(np.float32).max)
            ):
                wrong.append(
                    f"{name}: values beyond float32's range "
                    f"(largest {np.abs(array).max():.3g})"
                )
        problems = []
        if strict and missing:
            problems.append(
                f"missing {len(missing)}: {', '.join(missing[:20])}"
                + (" ..." if len(missing) > 20 else "")
            )
        if strict and unexpected:
            problems.append(
                f"unexpected {len(unexpected)}: {', '.join(unexpected[:20])}"
                + (" ..." if len(unexpected) > 20 else "")
            )
        if wrong:
            problems.append(
                f"wrong shape or values {len(wrong)}: {'; '.join(sorted(wrong)[:20])}"
            )
        if problems:
            raise ValueError(
                "cannot load the state dict into this "
                f"{self._describe()}: " + " | ".join(problems)
            )
        views = self.parameters()
        for name in given.keys() & table.keys():
            shape, layout = tuple(table[name][1]), table[name][6]
            array = given[name][1]
            if array.shape == shape:
                array = _to_stored(array, layout)
            views[name][...] = array

    # ---- files --------------------------------------------------------------------------

    def _metadata(self):
        spec = dict(self._spec)
        spec["normalization"] = self.normalization
        spec["max_length"] = self.max_length
        if self.tokenizer is not None:
            spec["tokenizer"] = self.tokenizer.to_str()
        return {"convirt_encoder": json.dumps(spec), "format": "convirt-encoder-1"}

    def save(self, path: PathLike) -> None:
        """Write every tensor (PyTorch layout and names) to a safetensors file, with the
        architecture in its metadata so :meth:`from_checkpoint` can rebuild it. The
        write is atomic: a crash leaves the previous file intact."""
        from safetensors.numpy import save

        data = save(self.state_dict(), metadata=self._metadata())
        atomic_write(path, data)

    def load(self, path: PathLike, strict: bool = True) -> Encoder:
        """Load a safetensors file by name into this encoder (see load_state_dict). A
        file that cannot be read or does not fit raises
        :class:`convirt.checkpoint.CheckpointError` (a ValueError) naming it, and
        nothing is changed."""
        tensors, _ = read_safetensors(path)
        try:
            self.load_state_dict(tensors, strict=strict)
        except ValueError as error:
            raise CheckpointError(f"{path}: {error}") from error
        return self

    def save_pretrained(self, directory: PathLike, **card: Any) -> str:
        """Write a Hugging Face-style folder (config.json, model.safetensors, tokenizer
        files, a README.md model card; ``card``: ``training``, ``data_size``,
        ``evaluation``, ``run``, ``name``) that :meth:`from_pretrained` reads back
        exactly. See :func:`convirt.export.save_pretrained`."""
        from .export import save_pretrained

        return save_pretrained(self, directory, **card)

    def to_torch(self) -> Any:
        """A ``torch.nn.Module`` with a copy of the weights whose forward matches
        :meth:`encode` (and ``.embed`` :meth:`embed`); see :func:`convirt.export.to_torch`."""
        from .export import to_torch

        return to_torch(self)

    def to_onnx(self, path: PathLike, *, image_size: int = 224, opset: int = 17) -> str:
        """Write an image encoder as ONNX (input float32 (N, C, H, W) in [0, 1]; outputs
        features and embeddings); see :func:`convirt.export.export_onnx`."""
        from .export import export_onnx

        return export_onnx(self, path, image_size=image_size, opset=opset)

    # ---- inference ----------------------------------------------------------------------

    def _inputs(self, x, attention_mask):
        if self.kind == "image" and not isinstance(x, np.ndarray):
            raise TypeError(
                "image encoder input: expected a uint8 or float32 NumPy array "
                f"(N, H, W) or (N, H, W, C), got {type(x).__name__}"
            )
        if self.kind == "image":
            return channels_last(x, self.in_channels), attention_mask
        if self.kind == "text" and not isinstance(x, (list, tuple, np.ndarray)):
            raise TypeError(
                "text encoder input: expected a list of strings, or int32 "
                "input_ids (N, T) with an attention_mask, got "
                f"{type(x).__name__}"
            )
        if (
            self.kind == "text"
            and isinstance(x, (list, tuple))
            and (len(x) == 0 or isinstance(x[0], str))
        ):
            if self.tokenizer is None:
                raise ValueError(
                    "this text encoder has no tokenizer: pass input_ids and "
                    "attention_mask, or build it with from_pretrained()"
                )
            from .text import tokenize

            return tokenize(self.tokenizer, list(x), max_length=self.max_length)
        return x, attention_mask

    def _batched(self, x, attention_mask, out, dim, which, batch_size, progress):
        x, attention_mask = self._inputs(x, attention_mask)
        n = len(x)
        if n == 0:
            raise ValueError("empty input: nothing to encode")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise TypeError(f"batch_size must be an integer, got {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if out is None:
            out = np.empty((n, dim), dtype=np.float32)
        elif (
            not isinstance(out, np.ndarray)
            or out.dtype != np.float32
            or out.shape != (n, dim)
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            raise ValueError(
                f"out must be a writeable C-contiguous float32 array of shape ({n}, {dim})"
            )
        starts = range(0, n, batch_size)
        if progress is None:
            progress = len(starts) > 10
        if progress:
            from ._optional import progress_bar

            starts = progress_bar(starts, desc=f"{which} ({self.kind})", unit="batch")
        was_training = self.training
        self.training = False
        try:
            for start in starts:
                stop = min(start + batch_size, n)
                if self.kind == "image":  # per batch: a memmap is read once
                    check_float_range(x[start:stop])
                mask = None if attention_mask is None else attention_mask[start:stop]
                if which == "encode":
                    self.forward(
                        x[start:stop], mask, embeddings=False, features_out=out[start:stop]
                    )
                else:
                    self.forward(
                        x[start:stop], mask, features=False, embeddings_out=out[start:stop]
                    )
        finally:
            self.training = was_training
        return out

    def encode(
        self,
        x: EncoderInput | Any,
        attention_mask: npt.ArrayLike | None = None,
        *,
        batch_size: int = 32,
        out: np.ndarray | None = None,
        progress: bool | None = None,
        image_size: int | None = None,
    ) -> np.ndarray | Embeddings:
        """Backbone features h (float32, (N, feature_dim)) in eval mode, in batches.
        ``progress``: a tqdm bar (default: when there are more than 10 batches). Images
        (uint8, or float32 in [0, 1]; (N, H, W[, C]), or (N, C, H, W) read as a
        transposed view) must be at least 32 x 32 pixels (a ResNet's five stride-2
        stages): smaller ones raise ValueError, never silently upsampled; float values
        outside FLOAT_IMAGE_RANGE raise ValueError (0-255 floats: divide by 255).
        Given a dataset (a convirt dataset, a prepared cache, synthetic_cxr's result),
        returns ``Embeddings(ids, features)`` in its order, its images resized to
        ``image_size`` (see :func:`convirt.embeddings.encode_dataset`)."""
        if _is_dataset(x):
            return _encode_dataset(
                self, x, image_size=image_size, batch_size=batch_size, progress=progress
            )
        return self._batched(
            x, attention_mask, out, self.feature_dim, "encode", batch_size, progress
        )

    def embed(
        self,
        x: EncoderInput | Any,
        attention_mask: npt.ArrayLike | None = None,
        *,
        batch_size: int = 32,
        out: np.ndarray | None = None,
        progress: bool | None = None,
        image_size: int | None = None,
    ) -> np.ndarray | Embeddings:
        """Projected embeddings g(h) (float32, (N, proj_dim)) in eval mode, in batches
        (images at least 32 x 32 pixels); ``Embeddings(ids, embeddings)`` for a dataset, as :meth:`encode`."""
        if _is_dataset(x):
            return _encode_dataset(
                self, x, projected=True, image_size=image_size, batch_size=batch_size,
                progress=progress,
            )  # fmt: skip
        return self._batched(
            x, attention_mask, out, self.proj_dim, "embed", batch_size, progress
        )

    # ---- pickling -------------------------------------------------------------------------

    def __reduce__(self):
        """Pickle (and copy.deepcopy, joblib, sklearn.clone of estimators holding one) by
        value: the architecture, the normalization, the tokenizer, the mode and a copy of
        every tensor. The copy owns new buffers; it shares nothing with this encoder."""
        state = {
            "metadata": self._metadata(),
            "training": self.training,
            "freeze_backbone": self.freeze_backbone,
            "tensors": self.parameters(),
        }  # views: pickle and deepcopy copy them
        return (_unpickle_encoder, (type(self), state))

    # ---- description ------------------------------------------------------------------------

    def _describe(self):
        spec = self._spec
        if spec["kind"] == "resnet":
            return f"ResNet-{spec['config']['depth']} encoder"
        return f"BERT encoder ({spec['config']['num_hidden_layers']} layers)"

    def __repr__(self):
        spec = self._spec
        if spec["kind"] == "resnet":
            args = (
                f"depth={spec['config']['depth']}, "
                f"in_channels={spec['config']['in_channels']}"
            )
        else:
            c = spec["config"]
            pooling = {v: k for k, v in _POOLING.items()}[c.get("pooling", 0)]
            args = (
                f"layers={c['num_hidden_layers']}, hidden={c['hidden_size']}, "
                f"heads={c['num_attention_heads']}, pooling='{pooling}', "
                f"freeze_layers={c.get('freeze_layers', 0)}"
            )
        return (
            f"Encoder({spec['kind']}: {args}, feature_dim={self.feature_dim}, "
            f"proj_dim={self.proj_dim}, training={self.training}, "
            f"parameters={self.num_parameters():,})"
        )


def _unpickle_encoder(cls, state):
    encoder = cls._from_metadata(state["metadata"])
    views = encoder.parameters()
    for name, array in state["tensors"].items():
        views[name][...] = array
    encoder.training = state["training"]
    encoder.freeze_backbone = state["freeze_backbone"]
    return encoder
