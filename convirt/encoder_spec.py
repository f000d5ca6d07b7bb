"""What the metadata of an encoder checkpoint may hold, and its checks: every field for
type and range (``check_spec``) and the sizes against the file's own tensors
(``check_shapes``), before anything is allocated. ``Encoder.from_checkpoint``,
``Encoder.from_pretrained`` (a save_pretrained folder) and unpickling read metadata
through them."""

import sys

from .errors import CheckpointError

__all__ = ["ENCODER_FORMAT", "POOLING", "check_shapes", "check_spec"]

POOLING = {"max": 0, "mean": 1, "cls": 2}

ENCODER_FORMAT = "convirt-encoder-1"
# What the metadata of an encoder checkpoint may hold. Config keys with the value the core
# uses when one is absent (None: required). Limits far above any real model (ResNet-50's
# 2048 features, BERT-large's 1024 x 24 layers and 30522 words) and low enough that a
# corrupt or hostile size is refused before anything is allocated.
_SPEC_KEYS = {
    "kind",
    "config",
    "proj_dim",
    "proj_hidden",
    "seed",
    "normalization",
    "max_length",
    "tokenizer",
}
_CONFIG_DEFAULTS = {
    "resnet": {"depth": 50, "in_channels": 1},
    "bert": {
        "vocab_size": None,
        "hidden_size": None,
        "num_hidden_layers": None,
        "num_attention_heads": None,
        "intermediate_size": None,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pooling": 0,
        "freeze_layers": 0,
    },
}
_SIZE_LIMITS = {
    "proj_dim": 1 << 16,
    "proj_hidden": 1 << 16,
    "in_channels": 4,
    "vocab_size": 1 << 21,
    "hidden_size": 1 << 14,
    "num_hidden_layers": 256,
    "num_attention_heads": 256,
    "intermediate_size": 1 << 16,
    "max_position_embeddings": 1 << 16,
    "type_vocab_size": 1 << 10,
    "max_length": 1 << 16,
}
# ResNet depth -> (blocks in layer3, bottleneck blocks?): how the tensors show the depth.
_RESNET_LAYOUT = {18: (2, False), 34: (6, False), 50: (6, True)}


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value):
    """A number float64 holds: math.isfinite(10**400) raises OverflowError."""
    return _is_number(value) and abs(value) <= sys.float_info.max


def check_spec(spec, where):
    """The encoder spec of checkpoint metadata (what _metadata() writes) with every field
    checked for type and range, the config completed with the core's defaults. Raises
    CheckpointError naming `where` and the field, before anything is built."""

    def fail(field, expected, value):
        raise CheckpointError(
            f"{where}: metadata field {field!r} must be {expected}, got {_short(value)}"
        )

    def size(field, value, low=1):
        high = _SIZE_LIMITS[field]
        if not _is_int(value) or not low <= value <= high:
            fail(field, f"an integer in [{low}, {high}]", value)
        return value

    if not isinstance(spec, dict):
        fail("convirt_encoder", "a JSON object", spec)
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise CheckpointError(
            f"{where}: unknown metadata field(s) {unknown} (known: "
            f"{sorted(_SPEC_KEYS)}); written by a newer convirt?"
        )
    missing = sorted({"kind", "config", "proj_dim", "proj_hidden"} - set(spec))
    if missing:
        raise CheckpointError(f"{where}: the metadata lacks the field(s) {missing}")
    kind = spec["kind"]
    if kind not in _CONFIG_DEFAULTS:
        fail("kind", "'resnet' or 'bert'", kind)
    config = spec["config"]
    if not isinstance(config, dict):
        fail("config", "a JSON object", config)
    defaults = _CONFIG_DEFAULTS[kind]
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise CheckpointError(
            f"{where}: metadata field 'config' has {unknown}, which a "
            f"kind={kind!r} encoder does not take (its keys: "
            f"{sorted(defaults)})"
        )
    lacking = sorted(k for k, v in defaults.items() if v is None and k not in config)
    if lacking:
        raise CheckpointError(
            f"{where}: metadata field 'config' lacks {lacking}, which a "
            f"kind={kind!r} encoder needs"
        )
    full = {**defaults, **config}
    if kind == "resnet":
        if not _is_int(full["depth"]) or full["depth"] not in _RESNET_LAYOUT:
            fail("depth", "18, 34 or 50", full["depth"])
        size("in_channels", full["in_channels"])
    else:
        for field in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            size(field, full[field])
        if full["hidden_size"] % full["num_attention_heads"]:
            fail(
                "num_attention_heads",
                f"a divisor of hidden_size {full['hidden_size']}",
                full["num_attention_heads"],
            )
        eps = full["layer_norm_eps"]
        if not _is_finite(eps) or not eps > 0:
            fail("layer_norm_eps", "a finite number > 0", eps)
        if not _is_int(full["pooling"]) or full["pooling"] not in POOLING.values():
            fail("pooling", "0 (max), 1 (mean) or 2 (cls)", full["pooling"])
        if not _is_int(full["freeze_layers"]) or not (
            0 <= full["freeze_layers"] <= full["num_hidden_layers"]
        ):
            fail(
                "freeze_layers",
                f"an integer in [0, {full['num_hidden_layers']}]",
                full["freeze_layers"],
            )
    size("proj_dim", spec["proj_dim"])
    size("proj_hidden", spec["proj_hidden"])
    if not _is_int(spec.get("seed", 0)):
        fail("seed", "an integer", spec["seed"])
    size("max_length", spec.get("max_length", 128), low=2)
    normalization = spec.get("normalization")
    if kind == "bert" and normalization is not None:
        fail("normalization", "null for a kind='bert' encoder", normalization)
    if normalization is not None:
        channels = full["in_channels"]
        if not (
            isinstance(normalization, (list, tuple))
            and len(normalization) == 2
            and all(
                isinstance(part, (list, tuple))
                and len(part) in (1, channels)
                and all(_is_finite(x) for x in part)
                for part in normalization
            )
            and all(x > 0 for x in normalization[1])
        ):
            fail(
                "normalization",
                f"[mean, std], each 1 or {channels} finite numbers, std > 0",
                normalization,
            )
    tokenizer = spec.get("tokenizer")
    if tokenizer is not None and (kind != "bert" or not isinstance(tokenizer, str)):
        fail("tokenizer", "a tokenizers JSON string on a kind='bert' encoder", tokenizer)
    return full


def check_shapes(spec, full, shapes, where):
    """Refuse metadata whose sizes disagree with the tensors of the same file (before
    the encoder they describe is allocated)."""

    def expect(name, axis, field, value):
        shape = shapes.get(name)
        if shape is None:
            raise CheckpointError(
                f"{where} has no tensor {name!r}, which every convirt "
                f"{spec['kind']} encoder checkpoint holds"
            )
        if len(shape) <= axis or shape[axis] != value:
            raise CheckpointError(
                f"{where}: metadata field {field!r} is {value}, but "
                f"tensor {name!r} has shape {tuple(shape)}"
            )

    def count(prefix):
        return len(
            {
                name[len(prefix) :].split(".")[0]
                for name in shapes
                if name.startswith(prefix)
            }
        )

    if spec["kind"] == "resnet":
        expect("conv1.weight", 1, "in_channels", full["in_channels"])
        blocks, bottleneck = _RESNET_LAYOUT[full["depth"]]
        if count("layer3.") != blocks or ("layer1.0.conv3.weight" in shapes) != bottleneck:
            raise CheckpointError(
                f"{where}: metadata field 'depth' is {full['depth']}, "
                f"but the tensors are those of another ResNet "
                f"({count('layer3.')} blocks in layer3)"
            )
    else:
        expect("embeddings.word_embeddings.weight", 0, "vocab_size", full["vocab_size"])
        expect("embeddings.word_embeddings.weight", 1, "hidden_size", full["hidden_size"])
        expect(
            "embeddings.position_embeddings.weight",
            0,
            "max_position_embeddings",
            full["max_position_embeddings"],
        )
        expect(
            "embeddings.token_type_embeddings.weight",
            0,
            "type_vocab_size",
            full["type_vocab_size"],
        )
        expect(
            "encoder.layer.0.intermediate.dense.weight",
            0,
            "intermediate_size",
            full["intermediate_size"],
        )
        layers = count("encoder.layer.")
        if layers != full["num_hidden_layers"]:
            raise CheckpointError(
                f"{where}: metadata field 'num_hidden_layers' is "
                f"{full['num_hidden_layers']}, but the tensors hold "
                f"{layers} layers"
            )
    expect("projection.0.weight", 0, "proj_hidden", spec["proj_hidden"])
    expect("projection.2.weight", 0, "proj_dim", spec["proj_dim"])
