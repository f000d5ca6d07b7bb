"""An encoder outside convirt: a PyTorch module, a Hugging Face-style folder, ONNX.

- :func:`to_torch` builds a ``torch.nn.Module`` with the encoder's weights whose
  ``forward`` computes what :meth:`Encoder.encode` computes (to float32 rounding): a
  ResNet written with ``torch.nn`` (torchvision's module and parameter names) for an
  image tower, a ``transformers.BertModel`` with the pooling for a text tower; both
  carry the projection head as ``.projection`` and an ``embed`` method.
- :func:`save_pretrained` writes a folder in the Hugging Face layout: ``config.json``,
  ``model.safetensors`` (PyTorch names and layouts), the tokenizer files of a text
  tower and a generated ``README.md`` model card (architecture, training settings, data
  size, evaluation table). :func:`load_pretrained` (``Encoder.from_pretrained``) reads it
  back exactly.
- :func:`export_onnx` writes an image encoder as an ONNX graph (through PyTorch's
  exporter, so torch is needed at export time only), inputs float32 (N, C, H, W) in
  [0, 1], outputs the features and the embeddings.

torch, transformers and onnx are optional (``pip install "convirt[export]"``): they are
imported by the functions that need them, never by ``import convirt``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._io import atomic_write, read_regular_file, read_safetensors
from .errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import Encoder

__all__ = [
    "export_onnx",
    "is_pretrained_folder",
    "load_pretrained",
    "model_card",
    "run_summary",
    "save_pretrained",
    "to_torch",
]

FOLDER_FORMAT = "convirt-pretrained-1"
_POOLING_NAMES = {0: "max", 1: "mean", 2: "cls"}
_BN_EPS = 1e-5  # the core's batch norm (PyTorch's default)
_TORCH_CLASSES: dict[str, Any] | None = None  # the torch.nn modules, once defined


def _require(module: str, purpose: str, extra: str = "export"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{purpose} needs {module}, which is not installed: "
            f'pip install {module} (or pip install "convirt[{extra}]")'
        ) from None


# ---- PyTorch ------------------------------------------------------------------------


def _torch_classes():
    """The torch.nn modules, defined on first use (torch is optional)."""
    global _TORCH_CLASSES
    if _TORCH_CLASSES is not None:
        return _TORCH_CLASSES
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, in_planes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes, eps=_BN_EPS)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes, eps=_BN_EPS)
            self.relu = nn.ReLU()
            self.downsample = _downsample(in_planes, planes, stride)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, in_planes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes, eps=_BN_EPS)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes, eps=_BN_EPS)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4, eps=_BN_EPS)
            self.relu = nn.ReLU()
            self.downsample = _downsample(in_planes, planes * 4, stride)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    def _downsample(in_planes, out_planes, stride):
        if stride == 1 and in_planes == out_planes:
            return None
        return nn.Sequential(
            nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
            nn.BatchNorm2d(out_planes, eps=_BN_EPS),
        )

    def _head(feature_dim, proj_hidden, proj_dim):
        return nn.Sequential(
            nn.Linear(feature_dim, proj_hidden), nn.ReLU(), nn.Linear(proj_hidden, proj_dim)
        )

    class ResNetEncoder(nn.Module):
        """convirt's image tower in torch.nn: torchvision's ResNet (v1.5) without
        ``fc``, the projection head as ``projection``, the input normalisation inside.

        ``forward(x)`` -> features h (N, 512 or 2048) of ``x``, (N, C, H, W) uint8 or
        float in [0, 1] ((N, H, W) for one channel); ``embed(x)`` -> g(h)."""

        def __init__(self, depth, in_channels, proj_dim, proj_hidden, normalization):
            super().__init__()
            blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
            block = Bottleneck if depth == 50 else BasicBlock
            self.depth, self.in_channels = depth, in_channels
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64, eps=_BN_EPS)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            in_planes = 64
            for stage, (count, planes) in enumerate(zip(blocks, [64, 128, 256, 512])):
                layers = []
                for b in range(count):
                    stride = 2 if (b == 0 and stage > 0) else 1
                    layers.append(block(in_planes, planes, stride))
                    in_planes = planes * block.expansion
                setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
            self.feature_dim = in_planes
            self.projection = _head(in_planes, proj_hidden, proj_dim)
            mean, std = normalization
            # Not in the state dict: they are settings, kept in config.json.
            self.register_buffer(
                "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), False
            )
            self.register_buffer(
                "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), False
            )

        def normalize(self, x):
            if x.dim() == 3:
                x = x.unsqueeze(1)
            if x.dtype == torch.uint8:
                x = x.to(torch.float32) / 255.0
            return (x.to(torch.float32) - self.mean) / self.std

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return x.mean(dim=(2, 3))

        def embed(self, x):
            return self.projection(self.forward(x))

    class BertTextEncoder(nn.Module):
        """convirt's text tower: a ``transformers.BertModel`` (``bert``) pooled over
        the valid tokens of its last layer ('max', 'mean' or 'cls'), the projection
        head as ``projection``. ``forward(input_ids, attention_mask,
        token_type_ids=None)`` -> features (N, hidden_size); ``embed`` -> g(h)."""

        def __init__(self, bert, pooling, proj_dim, proj_hidden):
            super().__init__()
            self.bert = bert
            self.pooling = pooling
            self.feature_dim = bert.config.hidden_size
            self.projection = _head(self.feature_dim, proj_hidden, proj_dim)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            input_ids = torch.as_tensor(input_ids).long()
            attention_mask = torch.as_tensor(attention_mask).long()
            if token_type_ids is not None:
                token_type_ids = torch.as_tensor(token_type_ids).long()
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state
            valid = attention_mask.bool().unsqueeze(-1)
            if self.pooling == "max":
                return hidden.masked_fill(~valid, -torch.inf).amax(dim=1)
            if self.pooling == "mean":
                return (hidden * valid).sum(1) / valid.sum(1)
            return hidden[:, 0]

        def embed(self, input_ids, attention_mask, token_type_ids=None):
            return self.projection(self.forward(input_ids, attention_mask, token_type_ids))

    class _Outputs(nn.Module):
        """Both outputs of an image encoder (what the ONNX graph returns)."""

        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, images):
            features = self.encoder(images)
            return features, self.encoder.projection(features)

    _TORCH_CLASSES = {
        "ResNetEncoder": ResNetEncoder,
        "BertTextEncoder": BertTextEncoder,
        "Outputs": _Outputs,
    }
    return _TORCH_CLASSES


def _spec(encoder: Encoder) -> dict:
    return dict(encoder._spec)


def bert_config(encoder: Encoder) -> dict:
    """The Hugging Face BertConfig fields of a text encoder (config.json)."""
    c = encoder._spec["config"]
    return {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "vocab_size": c["vocab_size"],
        "hidden_size": c["hidden_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "intermediate_size": c["intermediate_size"],
        "max_position_embeddings": c.get("max_position_embeddings", 512),
        "type_vocab_size": c.get("type_vocab_size", 2),
        "layer_norm_eps": c.get("layer_norm_eps", 1e-12),
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "pad_token_id": 0,
    }


def to_torch(encoder: Encoder) -> Any:
    """A ``torch.nn.Module`` (in eval mode) holding a copy of the encoder's weights.

    Image towers: ``module(x)`` with ``x`` a float (N, C, H, W) tensor in [0, 1] (or
    uint8, divided by 255) gives the features h of :meth:`Encoder.encode`, float32
    (N, feature_dim); ``module.embed(x)`` the embeddings g(h). Parameter names are
    torchvision's (``module.state_dict()`` equals ``encoder.state_dict()``); the
    normalisation is applied inside.

    Text towers (needs transformers): ``module(input_ids, attention_mask)`` with the
    arrays of :func:`convirt.text.tokenize`; ``module.bert`` is a
    ``transformers.BertModel``, ``module.tokenizer`` the encoder's tokenizer."""
    torch = _require("torch", "Encoder.to_torch()")
    classes = _torch_classes()
    spec = _spec(encoder)
    state = {name: torch.from_numpy(array) for name, array in encoder.state_dict().items()}
    if spec["kind"] == "resnet":
        module = classes["ResNetEncoder"](
            spec["config"]["depth"],
            spec["config"]["in_channels"],
            spec["proj_dim"],
            spec["proj_hidden"],
            encoder.normalization,
        )
        module.load_state_dict(state, strict=True)
        return module.eval()
    transformers = _require("transformers", "Encoder.to_torch() of a text encoder")
    config = transformers.BertConfig(**bert_config(encoder))
    bert = transformers.BertModel(config, add_pooling_layer=False)
    pooling = _POOLING_NAMES[spec["config"].get("pooling", 0)]
    module = classes["BertTextEncoder"](
        bert, pooling, spec["proj_dim"], spec["proj_hidden"]
    )
    missing, unexpected = module.load_state_dict(
        {(k if k.startswith("projection.") else "bert." + k): v for k, v in state.items()},
        strict=False,
    )
    # Hugging Face keeps the position ids as a buffer that the encoder has no tensor for.
    missing = [name for name in missing if not name.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(
            f"transformers.BertModel does not take this encoder's tensors: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )
    module.tokenizer = encoder.tokenizer
    module.max_length = encoder.max_length
    return module.eval()


# ---- ONNX -----------------------------------------------------------------------------


def export_onnx(
    encoder: Encoder,
    path: str | os.PathLike,
    *,
    image_size: int = 224,
    opset: int = 17,
) -> str:
    """Write an image encoder as an ONNX graph at ``path`` (returned).

    Input ``images``: float32 (N, C, H, W) in [0, 1] (uint8 pixels / 255), any N, H and
    W (the graph was traced at ``image_size``); the normalisation is in the graph.
    Outputs ``features`` (N, feature_dim) and ``embeddings`` (N, proj_dim), as
    :meth:`Encoder.encode` and :meth:`Encoder.embed`. Needs torch and onnx; check it
    with onnxruntime: ``InferenceSession(path).run(None, {"images": x})``."""
    if encoder.kind != "image":
        raise TypeError(
            "export_onnx writes image encoders; export a text tower with to_torch() and "
            "the ONNX tools of transformers"
        )
    torch = _require("torch", "export_onnx()", "onnx")
    _require("onnx", "export_onnx()", "onnx")
    import warnings

    module = to_torch(encoder)
    wrapper = _torch_classes()["Outputs"](module).eval()
    channels = encoder._spec["config"]["in_channels"]
    example = torch.rand(2, channels, image_size, image_size)
    path = os.fspath(path)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of one that needs onnxscript;
        # it still writes the same graph for this plain feed-forward network.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            path,
            input_names=["images"],
            output_names=["features", "embeddings"],
            dynamic_axes={
                "images": {0: "batch", 2: "height", 3: "width"},
                "features": {0: "batch"},
                "embeddings": {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )
    return path


# ---- Hugging Face-style folders ------------------------------------------------------------


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`save_pretrained`."""
    config = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(value, dict) and isinstance(value.get("convirt"), dict)


def _tokenizer_files(encoder: Encoder) -> dict[str, bytes]:
    tokenizer = encoder.tokenizer
    if tokenizer is None:
        return {}
    vocab = tokenizer.get_vocab()
    special = {
        key: token
        for key, token in (
            ("unk_token", "[UNK]"),
            ("sep_token", "[SEP]"),
            ("pad_token", "[PAD]"),
            ("cls_token", "[CLS]"),
            ("mask_token", "[MASK]"),
        )
        if token in vocab
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": encoder.max_length,
        **special,
    }
    return {
        "tokenizer.json": tokenizer.to_str().encode("utf-8"),
        "tokenizer_config.json": _json(config),
        "special_tokens_map.json": _json(special),
    }


def _json(value) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode("utf-8")


def save_pretrained(
    encoder: Encoder,
    directory: str | os.PathLike,
    *,
    training: Mapping[str, Any] | None = None,
    data_size: int | str | None = None,
    evaluation: Any = None,
    run: str | os.PathLike | None = None,
    name: str | None = None,
) -> str:
    """Write ``encoder`` to ``directory`` in the Hugging Face layout; returns the path.

    Files: ``config.json`` (a ``BertConfig`` for a text tower, the ResNet's depth and
    channels for an image tower, and under ``"convirt"`` everything
    :func:`load_pretrained` needs), ``model.safetensors`` (every tensor, PyTorch names
    and layouts), ``tokenizer.json`` + ``tokenizer_config.json`` +
    ``special_tokens_map.json`` for a text tower with a tokenizer, and ``README.md``, a
    model card. The card shows ``training`` (a dict of settings), ``data_size`` and
    ``evaluation`` (a dict, a list of row dicts, a DataFrame or markdown text); with
    ``run`` (a ``convirt pretrain`` folder) the settings, data size and training length
    are read from the run. Every file is written atomically."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    spec = _spec(encoder)
    spec["normalization"] = encoder.normalization
    spec["max_length"] = encoder.max_length
    spec["format"] = FOLDER_FORMAT
    if spec["kind"] == "resnet":
        config = {
            "model_type": "convirt-resnet",
            "architectures": ["ResNetEncoder"],
            "depth": spec["config"]["depth"],
            "num_channels": spec["config"]["in_channels"],
            "hidden_size": encoder.feature_dim,
        }
    else:
        config = bert_config(encoder)
    config["convirt"] = spec
    summary = run_summary(run) if run is not None else {}
    if training is None:
        training = summary.get("settings")
    if data_size is None:
        data_size = summary.get("data_size")
    from safetensors.numpy import save

    files = {
        "config.json": _json(config),
        "model.safetensors": save(encoder.state_dict(), metadata={"format": "pt"}),
        **_tokenizer_files(encoder),
    }
    card = model_card(
        encoder,
        training=training,
        data_size=data_size,
        evaluation=evaluation,
        history=summary.get("history"),
        name=name,
    )
    files["README.md"] = card.encode("utf-8")
    for filename, data in files.items():
        atomic_write(os.path.join(directory, filename), data)
    return directory


def load_pretrained(cls: type[Encoder], directory: str | os.PathLike) -> Encoder:
    """The encoder in a folder written by :func:`save_pretrained`, exactly as saved
    (weights, normalisation, tokenizer, max_length). Every field of config.json's
    ``"convirt"`` block is checked as :meth:`Encoder.from_checkpoint` checks a
    checkpoint's; CheckpointError naming the file otherwise."""
    directory = os.fspath(directory)
    config_path = os.path.join(directory, "config.json")
    raw = read_regular_file(config_path, CheckpointError, "a config.json file")
    try:
        config = json.loads(raw.decode("utf-8"))
    except ValueError as error:
        raise CheckpointError(f"{config_path} is not valid JSON: {error}") from None
    spec = config.get("convirt") if isinstance(config, dict) else None
    if not isinstance(spec, dict):
        raise CheckpointError(
            f"{config_path} has no 'convirt' object: not a folder written by "
            "save_pretrained (a plain Hugging Face BERT folder is read by "
            "Encoder.from_pretrained with its keyword arguments)"
        )
    spec = dict(spec)
    if spec.pop("format", FOLDER_FORMAT) != FOLDER_FORMAT:
        raise CheckpointError(
            f"{config_path}: 'convirt.format' is not {FOLDER_FORMAT!r}; written by a "
            "newer convirt?"
        )
    weights = os.path.join(directory, "model.safetensors")
    tensors, _ = read_safetensors(weights)
    encoder = cls._from_metadata(
        {"convirt_encoder": json.dumps(spec)},
        config_path,
        {name: array.shape for name, array in tensors.items()},
    )
    try:
        encoder.load_state_dict(tensors)
    except ValueError as error:
        raise CheckpointError(f"{weights}: {error}") from error
    tokenizer_path = os.path.join(directory, "tokenizer.json")
    if encoder.kind == "text" and os.path.exists(tokenizer_path):
        from .text import tokenizer_from_json

        text = read_regular_file(tokenizer_path, CheckpointError, "a tokenizer.json file")
        try:
            encoder.tokenizer = tokenizer_from_json(text.decode("utf-8"))
        except ValueError as error:
            raise CheckpointError(f"{tokenizer_path}: {error}") from None
    return encoder


# ---- the model card -------------------------------------------------------------------


def run_summary(run: str | os.PathLike, which: str = "best") -> dict:
    """What a model card says about a ``convirt pretrain`` folder: ``settings`` (its
    settings.json), ``data_size`` (training and validation pairs), ``history`` (one
    dict per epoch) and ``checkpoint`` (the folder of the ``which`` checkpoint,
    'best' or 'last'). Missing pieces are left out."""
    from .checkpoint import (
        RUN_CHECKPOINT_DIR,
        CheckpointDir,
        pointer_name,
        read_run_settings,
        read_state,
    )

    run = os.fspath(run)
    summary: dict[str, Any] = {}
    settings = read_run_settings(run)
    if settings:
        summary["settings"] = settings
    checkpoints = CheckpointDir(os.path.join(run, RUN_CHECKPOINT_DIR))
    folder = checkpoints.pointer(pointer_name(which)) or checkpoints.pointer("LAST")
    if folder is not None:
        summary["checkpoint"] = folder
        if os.path.isfile(os.path.join(folder, "trainer.json")):
            state = read_state(folder)
            summary["history"] = state.get("history")
            summary["steps"] = state.get("step")
    cache = settings.get("cache")
    if cache and os.path.isfile(os.path.join(cache, "index.json")):
        from .prepared import PreparedDataset

        n = len(PreparedDataset(cache, allow_incomplete=True))
        n_val = round(n * settings.get("val_fraction", 0.0))
        summary["data_size"] = f"{n - n_val} training and {n_val} validation pairs"
    return summary


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _evaluation_markdown(evaluation) -> str:
    if isinstance(evaluation, str):
        return evaluation.strip()
    if hasattr(evaluation, "to_dict") and hasattr(evaluation, "columns"):  # a DataFrame
        frame = evaluation.reset_index()
        return _markdown_table(frame.to_dict("records"))
    if isinstance(evaluation, Mapping):
        if all(isinstance(v, Mapping) for v in evaluation.values()):
            return _markdown_table([{"": k, **v} for k, v in evaluation.items()])
        return _markdown_table([{"measure": k, "value": v} for k, v in evaluation.items()])
    return _markdown_table(list(evaluation))


def model_card(
    encoder: Encoder,
    *,
    training: Mapping[str, Any] | None = None,
    data_size: int | str | None = None,
    evaluation: Any = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    name: str | None = None,
) -> str:
    """The README.md that :func:`save_pretrained` writes (markdown with a YAML header)."""
    spec = _spec(encoder)
    config = spec["config"]
    if spec["kind"] == "resnet":
        title = name or f"ConVIRT image encoder (ResNet-{config['depth']})"
        architecture = (
            f"ResNet-{config['depth']} (torchvision's layout, no `fc`), "
            f"{config['in_channels']} input channel(s)"
        )
        pipeline = "image-feature-extraction"
    else:
        title = name or f"ConVIRT text encoder (BERT, {config['num_hidden_layers']} layers)"
        architecture = (
            f"BERT, {config['num_hidden_layers']} layers of {config['hidden_size']} "
            f"units, {_POOLING_NAMES[config.get('pooling', 0)]}-pooled, "
            f"{config.get('freeze_layers', 0)} layer(s) frozen in training"
        )
        pipeline = "feature-extraction"
    rows = [
        ("architecture", architecture),
        ("features h", f"{encoder.feature_dim} (float32)"),
        (
            "projection g",
            f"{encoder.feature_dim} -> {spec['proj_hidden']} -> ReLU -> {spec['proj_dim']}",
        ),
        ("parameters", f"{encoder.num_parameters():,}"),
    ]
    if encoder.normalization is not None:
        mean, std = ([float(f"{v:.4g}") for v in part] for part in encoder.normalization)
        rows.append(("input normalisation", f"(x - {mean}) / {std}, x in [0, 1]"))
    if spec["kind"] == "bert":
        rows.append(("max tokens", str(encoder.max_length)))
    lines = [
        "---",
        "library_name: convirt",
        f"pipeline_tag: {pipeline}",
        "tags: [convirt, contrastive-learning, medical-imaging]",
        "---",
        "",
        f"# {title}",
        "",
        (
            "Pretrained with [convirt](https://pypi.org/project/convirt/): ConVIRT "
            "(Zhang et al. 2020, arXiv:2010.00747), a bidirectional contrastive loss "
            "between images and their reports. This folder was written by "
            "`Encoder.save_pretrained`."
        ),
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        *[f"| {key} | {_cell(value)} |" for key, value in rows],
        "",
    ]
    if training or data_size is not None or history:
        lines += ["## Training", ""]
        if data_size is not None:
            if isinstance(data_size, int):
                data_size = f"{data_size:,} pairs"
            lines += [f"Data: {data_size}.", ""]
        if history:
            last = history[-1]
            text = f"{last.get('epoch', len(history))} epoch(s), {last.get('step')} steps"
            if "val_loss" in last:
                text += f"; last validation loss {last['val_loss']:.4g}"
            lines += [f"Trained for {text}.", ""]
        if training:
            lines += ["| setting | value |", "|---|---|"]
            lines += [f"| {key} | {_cell(value)} |" for key, value in training.items()]
            lines.append("")
    if evaluation is not None:
        lines += ["## Evaluation", "", _evaluation_markdown(evaluation), ""]
    use = (
        "features = encoder.encode(images)   # uint8 (N, H, W) -> float32 (N, D)"
        if spec["kind"] == "resnet"
        else 'features = encoder.encode(["no acute cardiopulmonary process."])'
    )
    lines += [
        "## Use",
        "",
        "```python",
        "import convirt",
        'encoder = convirt.Encoder.from_pretrained("path/to/this/folder")',
        use,
        "module = encoder.to_torch()         # a torch.nn.Module with the same weights",
        "```",
        "",
    ]
    if spec["kind"] == "bert":
        lines += [
            (
                "`transformers.BertModel.from_pretrained` reads the backbone of this "
                "folder too (the projection head's tensors are reported as unused)."
            ),
            "",
        ]
    else:
        lines += [
            (
                "The tensors carry torchvision's names: a torchvision ResNet loads them "
                "with `load_state_dict(..., strict=False)` (no `fc`)."
            ),
            "",
        ]
    return "\n".join(lines)
