"""Zero-shot classification: classes named by sentences, images scored by their cosine
similarity to each class's sentences, no labelled training image (CLIP, CheXzero).

Two kinds of prompts:

- multi-class: ``{"Cardiomegaly": ["The heart is enlarged.", ...], "No Finding": [...]}``
  - each class has one or more sentences; each image's scores are a softmax over the
  classes (they sum to 1).
- multi-label, one positive/negative pair per finding (CheXzero's way):
  ``{"Edema": {"positive": ["There is pulmonary edema."], "negative": ["There is no
  pulmonary edema."]}, ...}`` or a ``("There is edema.", "There is no edema.")``
  tuple (a tuple is always a pair, a list always an ensemble) - each finding's
  score is the softmax of the image's similarity to its positive sentences against its
  negative ones, so every finding gets its own probability.

Several sentences for one class (or one side of a pair) are a prompt ensemble: each is
embedded and normalised, and their mean, normalised again, stands for the class.
"""

from dataclasses import dataclass

import numpy as np

from .._optional import require
from .labels import _binary_auc, _binary_matrix, _check_length
from .results import _escape, _html_table, _text_table

__all__ = ["ZeroShotResult", "class_embeddings", "zero_shot"]


def _sentences(value, where):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where} must be a sentence or a non-empty list of sentences")
    for sentence in value:
        if not isinstance(sentence, str) or not sentence.strip():
            raise ValueError(f"{where} must hold non-empty strings, got {sentence!r}")
    return list(value)


def _parse_prompts(prompts):
    """(class names, mode, {name: sentences} or {name: (positive, negative)})."""
    if not isinstance(prompts, dict) or not prompts:
        raise TypeError(
            "prompts must be a non-empty dict: class -> sentence(s), or class -> "
            '{"positive": sentence(s), "negative": sentence(s)}, got '
            f"{type(prompts).__name__}"
        )
    names = [str(name) for name in prompts]
    # A dict or a 2-tuple is a positive/negative pair; a string or a list, sentences.
    paired = [isinstance(v, (dict, tuple)) for v in prompts.values()]
    if any(paired) and not all(paired):
        raise ValueError(
            "prompts mix the two kinds: give every class either sentences (multi-class) "
            "or a positive/negative pair (multi-label)"
        )
    parsed = {}
    for name, value in zip(names, prompts.values()):
        where = f"prompts[{name!r}]"
        if not any(paired):
            parsed[name] = _sentences(value, where)
            continue
        if isinstance(value, dict):
            unknown = set(value) - {"positive", "negative"}
            if unknown or len(value) != 2:
                raise ValueError(
                    f'{where} must have the keys "positive" and "negative", got '
                    f"{sorted(value)}"
                )
            value = (value["positive"], value["negative"])
        elif len(value) != 2:
            raise ValueError(
                f"{where} is a tuple of {len(value)}; a pair is (positive, negative) "
                "(use a list for several sentences of one class)"
            )
        parsed[name] = (
            _sentences(value[0], f"{where} positive"),
            _sentences(value[1], f"{where} negative"),
        )
    if len(parsed) < 2 and not any(paired):
        raise ValueError(
            "multi-class prompts need at least 2 classes (for one finding, give a "
            "positive/negative pair)"
        )
    return names, ("multilabel" if any(paired) else "multiclass"), parsed


def _unit(x):
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def class_embeddings(text_encoder, sentences_per_class, *, batch_size=32):
    """The prompt ensemble of each class: (C, d) float64, unit rows.

    sentences_per_class: a list of C lists of sentences. Each sentence is embedded with
    ``text_encoder.embed`` and normalised; a class is the normalised mean of its
    sentences' embeddings."""
    flat = [s for sentences in sentences_per_class for s in sentences]
    embedded = _unit(text_encoder.embed(flat, batch_size=batch_size, progress=False))
    out, start = [], 0
    for sentences in sentences_per_class:
        out.append(embedded[start : start + len(sentences)].mean(axis=0))
        start += len(sentences)
    return _unit(np.stack(out))


def _softmax(logits):
    logits = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(eq=False)
class ZeroShotResult:
    """What :func:`zero_shot` returns.

    - ``class_names`` (C,) and ``mode``: 'multiclass' (a softmax over the classes) or
      'multilabel' (a positive/negative softmax per finding).
    - ``similarity`` (N, C): cosine similarity of each image to each class's prompt
      ensemble (its positive one for multi-label); ``negative_similarity`` (N, C) for
      multi-label, else None.
    - ``scores`` (N, C): the probabilities (rows sum to 1 for multi-class; each entry is
      P(finding present) for multi-label).
    - ``auc`` (C,) ROC AUC of each class's score against the labels, one class against
      the rest (NaN where the labels hold one value only); None without labels.
    - ``accuracy``: share of images whose top class is their label (multi-class with
      labels), else None.
    """

    class_names: list
    mode: str
    similarity: np.ndarray
    negative_similarity: np.ndarray
    scores: np.ndarray
    temperature: float
    n_prompts: list
    labels: np.ndarray = None
    auc: np.ndarray = None
    accuracy: float = None

    @property
    def predictions(self):
        """(N,) the top class index per image (multi-class), or (N, C) 0/1 with
        score > 0.5 (multi-label)."""
        if self.mode == "multiclass":
            return self.scores.argmax(axis=1)
        return (self.scores > 0.5).astype(np.int8)

    @property
    def mean_auc(self):
        """Mean AUC over the classes that have one (NaN-aware), or None."""
        if self.auc is None or np.isnan(self.auc).all():
            return None
        return float(np.nanmean(self.auc))

    def _rows(self):
        rows = []
        for k, name in enumerate(self.class_names):
            row = [name, str(self.n_prompts[k]), f"{self.scores[:, k].mean():.3f}"]
            if self.auc is not None:
                row.append("-" if np.isnan(self.auc[k]) else f"{self.auc[k]:.3f}")
            rows.append(row)
        header = ["class", "prompts", "mean score"] + (
            ["AUC"] if self.auc is not None else []
        )
        return header, rows

    def _title(self):
        kind = (
            "softmax over classes"
            if self.mode == "multiclass"
            else "positive vs negative prompt per finding"
        )
        extra = []
        if self.mean_auc is not None:
            extra.append(f"mean AUC {self.mean_auc:.3f}")
        if self.accuracy is not None:
            extra.append(f"accuracy {self.accuracy:.3f}")
        tail = f"; {', '.join(extra)}" if extra else ""
        return (
            f"ZeroShotResult({len(self.scores)} images, {len(self.class_names)} classes, "
            f"{self.mode}: {kind}, temperature {self.temperature:g}{tail})"
        )

    def __repr__(self):
        header, rows = self._rows()
        return _text_table(self._title(), header, rows, left=(0,))

    def _repr_html_(self):
        header, rows = self._rows()
        return _html_table(_escape(self._title()), header, rows)

    def to_frame(self, per_image=False):
        """A pandas DataFrame. Default: one row per class with the number of prompts,
        the mean score and the AUC (when labels were given). ``per_image=True``: the
        (N, C) scores, one column per class."""
        pd = require("pandas", "ZeroShotResult.to_frame()")

        if per_image:
            return pd.DataFrame(
                self.scores, columns=pd.Index(self.class_names, name="class")
            ).rename_axis("image")
        frame = pd.DataFrame(
            {"prompts": self.n_prompts, "mean_score": self.scores.mean(axis=0)},
            index=pd.Index(self.class_names, name="class"),
        )
        if self.auc is not None:
            frame["auc"] = self.auc
        return frame


def _check_labels(labels, n, mode, n_classes):
    """(N, C) 0/1 labels: multi-label columns, or multi-class indices or one-hot rows."""
    labels = np.asarray(labels)
    _check_length(labels, n, "labels", "images")
    if mode == "multiclass" and labels.ndim == 1:
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(
                f"multi-class labels must be integer class indices, got dtype {labels.dtype}"
            )
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(
                f"class indices must be in [0, {n_classes - 1}], got {labels.min()} to "
                f"{labels.max()}"
            )
        return np.eye(n_classes, dtype=np.int8)[labels]
    if labels.ndim != 2 or labels.shape[1] != n_classes:
        raise ValueError(
            f"labels must be (N, {n_classes}) 0/1 columns in the order of the prompts"
            + (" or (N,) class indices" if mode == "multiclass" else "")
            + f", got shape {labels.shape}"
        )
    return _binary_matrix(labels, "labels")


def zero_shot(
    image_encoder,
    text_encoder,
    images,
    prompts,
    labels=None,
    *,
    temperature=0.1,
    image_size=None,
    batch_size=32,
    progress=None,
):
    """Zero-shot classification of ``images`` by the classes that ``prompts`` name.

    Parameters
    ----------
    image_encoder, text_encoder : Encoder
        A pretrained pair (their projections share one space), e.g. from a run's
        checkpoint: ``Encoder.from_checkpoint(".../image_encoder.safetensors")``.
    images : ndarray
        What ``image_encoder.embed`` takes: uint8 or float32 (N, H, W) or (N, H, W, C),
        at the view size the encoder was trained on, or any size with ``image_size``.
    prompts : dict
        class -> sentence or list of sentences (multi-class, a softmax over classes), or
        finding -> ``{"positive": ..., "negative": ...}`` or a tuple ``(positive,
        negative)`` (multi-label, a softmax over each pair); each side a sentence or a
        list. Lists are prompt ensembles (averaged).
    labels : array, optional
        (N, C) 0/1 in the order of ``prompts``; for multi-class also (N,) class indices.
        With labels, the result has the ROC AUC of each class (one against the rest).
    temperature : float, default 0.1
        Softmax temperature on cosine similarities (ConVIRT's 0.1). AUC does not depend
        on it for multi-label prompts; for multi-class it shifts each class's ranking.
    image_size : int, optional
        Resize the images to image_size x image_size first (the evaluation view:
        :func:`convirt.eval_augment`, nothing random).
    batch_size, progress : passed to ``embed``.

    Returns
    -------
    ZeroShotResult
        ``scores`` (N, C), ``similarity``, ``auc`` (C,) with labels, ``to_frame()``.
    """
    names, mode, parsed = _parse_prompts(prompts)
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    for encoder, kind, name in (
        (image_encoder, "image", "image_encoder"),
        (text_encoder, "text", "text_encoder"),
    ):
        if getattr(encoder, "kind", None) != kind:
            raise TypeError(
                f"{name} must be a convirt {kind} Encoder, got "
                f"{getattr(encoder, 'kind', type(encoder).__name__)!r}"
            )
    if image_encoder.proj_dim != text_encoder.proj_dim:
        raise ValueError(
            f"the encoders project to different sizes ({image_encoder.proj_dim} for "
            f"images, {text_encoder.proj_dim} for text): they were not trained together"
        )
    images = np.asarray(images) if not isinstance(images, np.ndarray) else images
    if image_size is not None:
        from ..augment import eval_augment

        size = int(image_size)
        channels = images.shape[3:] if images.ndim == 4 else ()
        images = eval_augment(size)(
            images, out=np.empty((len(images), size, size, *channels), np.float32)
        )
    v = _unit(image_encoder.embed(images, batch_size=batch_size, progress=progress))
    if mode == "multiclass":
        classes = class_embeddings(text_encoder, [parsed[n] for n in names])
        similarity = v @ classes.T
        negative = None
        scores = _softmax(similarity / temperature)
        n_prompts = [len(parsed[n]) for n in names]
    else:
        positive = class_embeddings(text_encoder, [parsed[n][0] for n in names])
        negative_classes = class_embeddings(text_encoder, [parsed[n][1] for n in names])
        similarity = v @ positive.T
        negative = v @ negative_classes.T
        scores = _softmax(np.stack([similarity, negative], axis=-1) / temperature)[..., 0]
        n_prompts = [len(parsed[n][0]) + len(parsed[n][1]) for n in names]
    result = ZeroShotResult(
        class_names=names,
        mode=mode,
        similarity=similarity,
        negative_similarity=negative,
        scores=scores,
        temperature=float(temperature),
        n_prompts=n_prompts,
    )
    if labels is not None:
        y = _check_labels(labels, len(v), mode, len(names))
        result.labels = y
        result.auc = np.array(
            [_binary_auc(y[:, k], scores[:, k]) for k in range(len(names))]
        )
        if mode == "multiclass" and (y.sum(axis=1) == 1).all():
            result.accuracy = float((scores.argmax(1) == y.argmax(1)).mean())
    return result
