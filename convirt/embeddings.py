"""Features with the identifiers of what they encode.

- ``Encoder.encode(dataset)`` / ``Encoder.embed(dataset)`` (:func:`encode_dataset`)
  return an :class:`Embeddings`: ``ids`` (the dataset's ``sources``: file paths, or
  ``"array[i]"``) and ``features`` (float32 (N, D)), in the dataset's order.
- :func:`save_embeddings` writes both into one table a DataFrame reads: Parquet when
  pyarrow is installed, else CSV (exact: 9 significant digits round-trip float32), with
  the array also as ``.npy``; :func:`load_embeddings` reads any of them back.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from ._io import atomic_write, check_regular_file, read_regular_file
from ._optional import progress_bar, require
from .errors import DataFileError

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import Encoder

__all__ = [
    "Embeddings",
    "check_embeddings_path",
    "encode_dataset",
    "is_dataset",
    "load_embeddings",
    "save_embeddings",
]

ID_COLUMN = "id"


class Embeddings(NamedTuple):
    """``ids`` (list of N str) and ``features`` (float32 (N, D)) in the same order;
    unpacks as ``ids, features = encoder.encode(dataset)``."""

    ids: list
    features: np.ndarray

    def to_frame(self) -> Any:
        """A pandas DataFrame indexed by id, one float32 column per feature (f0, f1...)."""
        pd = require("pandas", "Embeddings.to_frame()")

        return pd.DataFrame(
            self.features,
            index=pd.Index(self.ids, name=ID_COLUMN),
            columns=_columns(self.features.shape[1]),
        )

    def __repr__(self):
        n, d = self.features.shape
        first = f"{self.ids[0]!r}, ..." if self.ids else ""
        return f"Embeddings(n={n}, dim={d}, ids=[{first}])"


def _columns(dim: int) -> list[str]:
    return [f"f{k}" for k in range(dim)]


def is_dataset(x: Any) -> bool:
    """Whether ``x`` is a set of pairs (a convirt dataset, a cache, synthetic_cxr's
    result) rather than an array or a list of strings."""
    return (
        not isinstance(x, (np.ndarray, list, tuple, str))
        and hasattr(x, "reports")
        and (hasattr(x, "images") or hasattr(x, "load_image"))
    ) or (isinstance(x, tuple) and hasattr(x, "_fields") and "images" in x._fields)


def dataset_ids(dataset: Any) -> list[str]:
    """The identifiers of a dataset's entries: its ``sources`` (file paths or
    ``"array[i]"``), else the row numbers as strings."""
    sources = getattr(dataset, "sources", None)
    n = len(dataset.reports)
    if sources is not None and len(sources) == n:
        return [str(s) for s in sources]
    return [str(i) for i in range(n)]


def encode_dataset(
    encoder: Encoder,
    dataset: Any,
    *,
    projected: bool = False,
    image_size: int | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> Embeddings:
    """Every entry of ``dataset`` through ``encoder`` (its images for an image tower,
    its reports for a text tower): backbone features h, or g(h) with ``projected``.

    Images held as one array (ArrayDataset, a prepared cache, synthetic_cxr) are read in
    place, resized to ``image_size`` first when it is given and differs; images that
    are files are decoded, resized and center-cropped to ``image_size`` (required
    then), a chunk at a time."""
    ids = dataset_ids(dataset)
    method = encoder.embed if projected else encoder.encode
    if encoder.kind == "text":
        features = method(list(dataset.reports), batch_size=batch_size, progress=progress)
        return Embeddings(ids, cast(np.ndarray, features))
    images = getattr(dataset, "images", None)
    if isinstance(images, np.ndarray) and images.ndim >= 3:
        if image_size is not None and images.shape[1:3] != (image_size, image_size):
            from .augment import eval_augment

            images = eval_augment(image_size)(
                images, out=np.empty((len(images), image_size, image_size), np.float32)
            )
        features = method(images, batch_size=batch_size, progress=progress)
        return Embeddings(ids, cast(np.ndarray, features))
    if image_size is None:
        raise ValueError(
            f"the images of {type(dataset).__name__} are files of their own sizes: give "
            "image_size= (the side the encoder was trained at)"
        )
    n = len(ids)
    dim = encoder.proj_dim if projected else encoder.feature_dim
    features = np.empty((n, dim), np.float32)
    chunk = max(batch_size, 64)
    starts = range(0, n, chunk)
    if progress is None:
        progress = n > 10 * batch_size
    if progress:
        starts = progress_bar(
            starts, desc=f"encode ({type(dataset).__name__})", unit="chunk"
        )
    for start in starts:
        stop = min(start + chunk, n)
        batch = np.stack(
            [dataset.load_image(i, size=image_size) for i in range(start, stop)]
        )
        method(batch, batch_size=batch_size, out=features[start:stop], progress=False)
    return Embeddings(ids, features)


# ---- files ---------------------------------------------------------------------------------


def _has_pyarrow() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def check_embeddings_path(path: str | os.PathLike) -> str:
    """The suffix of an output :func:`save_embeddings` can write (.parquet, .csv or
    .npy); ValueError or ImportError (Parquet without pyarrow) otherwise, so that a
    command can refuse before it does the work."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".parquet", ".csv", ".npy"):
        raise ValueError(f"{path}: the output must end in .parquet, .csv or .npy")
    if suffix == ".parquet" and not _has_pyarrow():
        raise ImportError(f"{path}: writing Parquet needs pyarrow (pip install pyarrow)")
    return suffix


def save_embeddings(
    path: str | os.PathLike, ids: Sequence[str], features: np.ndarray
) -> list[str]:
    """Write ``ids`` and ``features`` (float32 (N, D)); returns the paths written.

    ``path`` ending in ``.parquet``: one Parquet table (needs pyarrow), column ``id``
    and one float32 column per feature (f0, f1, ...). ``.csv``: the same table as CSV
    (9 significant digits, exact for float32), and the array beside it as ``.npy``.
    ``.npy``: the array, and beside it the table (``.parquet`` when pyarrow is
    installed, else ``.csv``). ``pandas.read_parquet`` / ``read_csv(index_col="id")``
    read the table; :func:`load_embeddings` reads any of them."""
    path = os.fspath(path)
    features = np.asarray(features, np.float32)
    ids = [str(i) for i in ids]
    if features.ndim != 2 or len(ids) != len(features):
        raise ValueError(
            f"expected N ids and features (N, D); got {len(ids)} ids and features of "
            f"shape {features.shape}"
        )
    stem = os.path.splitext(path)[0]
    suffix = check_embeddings_path(path)
    written = []
    if suffix in (".npy", ".csv"):
        written.append(_save_npy(stem + ".npy", features))
    table = path if suffix != ".npy" else stem + (".parquet" if _has_pyarrow() else ".csv")
    if table.endswith(".parquet"):
        _save_parquet(table, ids, features)
    else:
        _save_csv(table, ids, features)
    return [table, *written] if suffix != ".npy" else [*written, table]


def _save_npy(path: str, features: np.ndarray) -> str:
    import io

    buffer = io.BytesIO()
    np.save(buffer, features)
    atomic_write(path, buffer.getvalue())
    return path


def _save_parquet(path: str, ids: list[str], features: np.ndarray) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {ID_COLUMN: pa.array(ids, pa.string())}
    for k, name in enumerate(_columns(features.shape[1])):
        columns[name] = pa.array(features[:, k])
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    atomic_write(path, buffer.getvalue())


def _save_csv(path: str, ids: list[str], features: np.ndarray) -> None:
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([ID_COLUMN, *_columns(features.shape[1])])
    for identifier, row in zip(ids, features):
        writer.writerow([identifier, *(f"{v:.9g}" for v in row.tolist())])
    atomic_write(path, text.getvalue().encode("utf-8"))


def load_embeddings(path: str | os.PathLike) -> Embeddings:
    """What :func:`save_embeddings` wrote, from any of its files: ``.parquet``,
    ``.csv`` or ``.npy`` (whose ids are read from the table beside it). A path that is
    not a regular file (a FIFO, a device) is refused with :class:`DataFileError`."""
    path = os.fspath(path)
    stem, suffix = os.path.splitext(path)
    suffix = suffix.lower()
    expected = "an embeddings file (.parquet, .csv or .npy)"
    if suffix in (".npy", ".parquet"):  # a FIFO would block the read forever
        check_regular_file(path, DataFileError, expected)
    if suffix == ".npy":
        features = np.load(path)
        for table in (stem + ".parquet", stem + ".csv"):
            if os.path.exists(table):
                return Embeddings(load_embeddings(table).ids, features)
        raise FileNotFoundError(f"{path}: no {stem}.parquet or {stem}.csv with its ids")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        ids = [str(i) for i in table.column(ID_COLUMN).to_pylist()]
        names = [n for n in table.column_names if n != ID_COLUMN]
        features = np.stack([table.column(n).to_numpy() for n in names], axis=1).astype(
            np.float32
        )
        return Embeddings(ids, features.reshape(len(ids), len(names)))
    if suffix == ".csv":
        import csv

        raw = read_regular_file(path, DataFileError, expected)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataFileError(f"{path} is not UTF-8 text ({error})") from None
        rows = list(csv.reader(io.StringIO(text, newline="")))
        if not rows or rows[0][:1] != [ID_COLUMN]:
            raise ValueError(f"{path}: expected a header starting with {ID_COLUMN!r}")
        width = len(rows[0])
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != width:
                raise DataFileError(
                    f"{path}: line {line} has {len(row)} fields, the header {width}"
                )
        ids = [row[0] for row in rows[1:]]
        try:
            features = np.array([row[1:] for row in rows[1:]], dtype=np.float32)
        except ValueError as error:  # a field that is not a number
            raise DataFileError(f"{path}: {error}") from None
        return Embeddings(ids, features.reshape(len(ids), width - 1))
    raise ValueError(f"{path}: expected a .parquet, .csv or .npy file")
