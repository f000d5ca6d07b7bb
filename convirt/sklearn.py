"""convirt.sklearn: scikit-learn transformers that turn images or reports into features,
so that a pretrained encoder drops into a pipeline::

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from convirt.sklearn import ImageEmbedder

    probe = make_pipeline(ImageEmbedder(encoder), StandardScaler(), LogisticRegression())
    probe.fit(train_images, train_labels).score(test_images, test_labels)

The encoder is frozen: ``fit`` learns nothing (it checks the input), ``transform`` calls
``encoder.encode`` (backbone features h) or ``encoder.embed`` (projected embeddings).

Cloning shares the encoder. ``sklearn.base.clone`` deep-copies every parameter that is
not an estimator, and an encoder is a C object holding its weights, gradients and
activation buffers (hundreds of MB for a ResNet-50): copying it for every fold of a
grid search would cost memory and time and buy nothing, since the embedder never
changes it. So ``clone(embedder).encoder is embedder.encoder``; pass a separate
encoder (e.g. ``Encoder.from_checkpoint(path)``) where an independent copy is wanted.
One encoder runs one call at a time: parallel jobs that share an encoder in threads
get a clear RuntimeError (use processes, or one encoder per thread); jobs in other
processes need the encoder to pickle.
"""

import copy
import numbers

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone

__all__ = ["ImageEmbedder", "TextEmbedder"]

_KINDS = ("features", "embeddings")


class _Embedder(TransformerMixin, BaseEstimator):
    """What the image and text embedders share: parameters, transform, cloning."""

    _modality = None  # 'image' or 'text'

    def __init__(self, encoder, *, kind="features", batch_size=32, progress=False):
        self.encoder = encoder
        self.kind = kind
        self.batch_size = batch_size
        self.progress = progress

    def _check_params(self):
        if self.kind not in _KINDS:
            raise ValueError(
                f"kind must be 'features' (backbone features, encoder.encode) "
                f"or 'embeddings' (projected, encoder.embed), got "
                f"{self.kind!r}"
            )
        size = self.batch_size
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not all(callable(getattr(self.encoder, m, None)) for m in ("encode", "embed")):
            raise TypeError(
                f"encoder must have encode() and embed() methods (a "
                f"convirt.Encoder), got {type(self.encoder).__name__}"
            )
        encoder_kind = getattr(self.encoder, "kind", self._modality)
        if encoder_kind != self._modality:
            other = "TextEmbedder" if self._modality == "image" else "ImageEmbedder"
            article = {"image": "an", "text": "a"}
            raise ValueError(
                f"{type(self).__name__} needs {article[self._modality]} "
                f"{self._modality} encoder, got "
                f"{article.get(encoder_kind, 'a')} {encoder_kind} encoder; "
                f"use {other}"
            )

    def fit(self, X, y=None):
        """Check the parameters and X; nothing is learned (the encoder is frozen).
        ImageEmbedder with ``image_shape`` records ``n_features_in_`` of flattened
        images. Returns self."""
        self._check_params()
        self._validate(X, reset=True)
        return self

    def transform(self, X):
        """float32 (N, dim): ``encoder.encode(X)`` for kind='features' (dim =
        encoder.feature_dim), ``encoder.embed(X)`` for 'embeddings' (encoder.proj_dim),
        in batches of ``batch_size`` in eval mode."""
        self._check_params()
        X = self._validate(X)
        method = self.encoder.encode if self.kind == "features" else self.encoder.embed
        return method(X, batch_size=self.batch_size, progress=self.progress)

    def _output_dim(self):
        attribute = "feature_dim" if self.kind == "features" else "proj_dim"
        return int(getattr(self.encoder, attribute))

    def get_feature_names_out(self, input_features=None):
        """Names of the output columns, e.g. 'image_feature0' ... (for set_output)."""
        self._check_params()
        prefix = f"{self._modality}_{'feature' if self.kind == 'features' else 'embedding'}"
        return np.asarray([f"{prefix}{i}" for i in range(self._output_dim())], dtype=object)

    def __sklearn_clone__(self):
        # Like sklearn's clone, except that the encoder is shared (see the module doc).
        params = self.get_params(deep=False)
        encoder = params.pop("encoder")
        params = {name: clone(value, safe=False) for name, value in params.items()}
        new = type(self)(encoder, **params)
        if hasattr(self, "_metadata_request"):
            new._metadata_request = copy.deepcopy(self._metadata_request)
        if hasattr(self, "_sklearn_output_config"):
            new._sklearn_output_config = copy.deepcopy(self._sklearn_output_config)
        return new

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False  # stateless: transform works without fit
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.input_tags.two_d_array = False
        return tags


class ImageEmbedder(_Embedder):
    """A scikit-learn transformer from images to the features of a frozen image encoder.

    Parameters
    ----------
    encoder : an image :class:`convirt.Encoder` (shared, never modified or copied).
    kind : 'features' (backbone features h, ``encoder.encode``; what the paper's linear
        probe uses) or 'embeddings' (projected embeddings, ``encoder.embed``).
    image_shape : None, or the shape (H, W) or (H, W, C) of flattened images (one entry
        may be -1, as in ``np.reshape``): X may then also be a 2-D array (N, H*W*C) of
        images stored one per row (row-major), which is reshaped as a view. ``fit``
        records its ``n_features_in_``, and ``transform`` checks it.
    batch_size : images per forward pass.
    progress : show a tqdm bar (None: when there are more than 10 batches).

    X is an array of images (N, H, W) or (N, H, W, C), or a list of equally shaped
    images. uint8 (scaled by 1/255) and float32 are passed to the encoder in place
    (memmaps too); float16 and float64 are converted to float32; other dtypes (e.g.
    int16 DICOM pixels) are refused, since their scale is unknown.
    """

    _modality = "image"

    def __init__(
        self, encoder, *, kind="features", image_shape=None, batch_size=32, progress=False
    ):
        super().__init__(encoder, kind=kind, batch_size=batch_size, progress=progress)
        self.image_shape = image_shape

    def _check_image_shape(self):
        shape = self.image_shape
        ok = (
            isinstance(shape, (tuple, list))
            and len(shape) in (2, 3)
            and all(isinstance(v, numbers.Integral) and (v >= 1 or v == -1) for v in shape)
            and sum(v == -1 for v in shape) <= 1
        )
        if not ok:
            raise ValueError(
                f"image_shape must be (H, W) or (H, W, C) with positive sizes "
                f"(one may be -1), got {shape!r}"
            )
        return tuple(int(v) for v in shape)

    def _validate(self, X, reset=False):
        if self.image_shape is not None:
            shape = self._check_image_shape()
            if not (isinstance(X, np.ndarray) and X.ndim in (3, 4)):
                from sklearn.utils.validation import validate_data

                # Flattened images: sklearn's checks and messages (sparse, complex,
                # NaN, empty, n_features_in_), then a reshaping view.
                X = validate_data(self, X, reset=reset, dtype="numeric")
                try:
                    X = X.reshape((len(X),) + shape)
                except ValueError:
                    raise ValueError(
                        f"X has {X.shape[1]} columns, which do not reshape to "
                        f"image_shape {shape}"
                    ) from None
        if not isinstance(X, np.ndarray):  # a list of images; memmaps pass as they are
            X = np.asarray(X)
        if X.ndim not in (3, 4):
            hint = (
                ""
                if self.image_shape is not None
                else "; for images flattened into rows, set image_shape"
            )
            raise ValueError(
                f"ImageEmbedder takes images of shape (N, H, W) or "
                f"(N, H, W, C), got an array of shape {X.shape}{hint}"
            )
        if X.shape[0] == 0:
            raise ValueError(f"no images: X has shape {X.shape}")
        if X.dtype in (np.float16, np.float64):
            X = X.astype(np.float32)
        elif X.dtype not in (np.uint8, np.float32):
            raise TypeError(
                f"images must be uint8 (0-255) or float (0-1), got dtype "
                f"{X.dtype}; scale them and convert with .astype(np.float32)"
            )
        if X.dtype == np.float32 and not np.isfinite(X).all():
            raise ValueError("images contain NaN or Inf")
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.two_d_array = self.image_shape is not None
        return tags


class TextEmbedder(_Embedder):
    """A scikit-learn transformer from report texts to the features of a frozen text
    encoder (one with a tokenizer, e.g. ``Encoder.from_pretrained(path)``).

    Parameters as :class:`ImageEmbedder`. X is a sequence of N strings: a list, a 1-D
    array, an (N, 1) array or a one-column DataFrame (as ColumnTransformer passes).
    """

    _modality = "text"

    def _validate(self, X, reset=False):
        if hasattr(X, "to_numpy"):  # pandas Series / DataFrame
            X = X.to_numpy()
        if isinstance(X, np.ndarray):
            if X.ndim == 2 and X.shape[1] == 1:
                X = X[:, 0]
            if X.ndim != 1:
                raise ValueError(
                    f"TextEmbedder takes a sequence of N strings (or an "
                    f"(N, 1) column), got an array of shape {X.shape}"
                )
            X = X.tolist()
        elif isinstance(X, str) or not hasattr(X, "__len__"):
            raise TypeError(
                f"TextEmbedder takes a sequence of strings, got {type(X).__name__}"
            )
        X = list(X)
        if not X:
            raise ValueError("no texts: X is empty")
        for i, text in enumerate(X):
            if not isinstance(text, str):
                raise TypeError(
                    f"TextEmbedder takes strings, got {type(text).__name__} at position {i}"
                )
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        return tags
