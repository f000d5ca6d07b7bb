"""The prepared cache: every image of a dataset decoded and resized once into one uint8
memmap (N, size, size) that training reads in place.

- :func:`prepare` writes it (resumable, crash-safe, counting what it skips);
- :class:`PreparedDataset` reads it.

The index and the reports file are checked field by field when read: a malformed one
raises :class:`DataFileError` (a ValueError) naming the file and the field or line.
"""

import concurrent.futures
import contextlib
import errno
import fcntl
import glob
import json
import os
import sys
import tempfile
import time
import warnings
from typing import NamedTuple

import numpy as np

from ._io import _umask, atomic_write, read_regular_file
from .datasets.paired import PairedDataset, _describe
from .errors import DataFileError, ImageDecodeError, StateError
from .images import MAX_IMAGE_SIZE, _check_size, resize_center_crop

__all__ = [
    "PREPARED_FORMAT",
    "PREPARED_VERSION",
    "PrepareSummary",
    "PreparedDataset",
    "prepare",
]

PREPARED_FORMAT = "convirt-prepared"
PREPARED_VERSION = 1
_IMAGES_FILE = "images.u8"
_REPORTS_FILE = "reports.jsonl"
_INDEX_FILE = "index.json"
_LOCK_FILE = ".prepare.lock"  # held by the one prepare() writing the folder
_MAX_PREPARED_SIZE = MAX_IMAGE_SIZE  # what prepare() writes


class PrepareSummary(NamedTuple):
    """What :func:`prepare` did. ``failures`` lists (source, status, message) for every
    entry skipped in this run; statuses are "missing", "corrupt", "empty_report"."""

    out_dir: str
    total: int
    prepared: int
    kept: int
    new: int
    missing: int
    corrupt: int
    empty_report: int
    failures: list

    @property
    def skipped(self):
        return self.missing + self.corrupt + self.empty_report

    def __str__(self):
        text = (
            f"{self.prepared} of {self.total} pairs prepared in {self.out_dir} "
            f"({self.kept} kept from before, {self.new} new)"
        )
        if self.skipped:
            text += (
                f"; {self.skipped} skipped: {self.missing} missing, "
                f"{self.corrupt} corrupt, {self.empty_report} empty reports"
            )
        return text


def prepare(
    dataset,
    out_dir,
    size=256,
    *,
    workers=None,
    progress=True,
    overwrite=False,
    checkpoint_seconds=30.0,
):
    """Decode and resize every image of ``dataset`` once into a uint8 memmap cache that
    :class:`PreparedDataset` reads in place.

    Each image becomes grayscale uint8 ``size x size``: shorter side resized to
    ``size``, centre cropped (:func:`decode_image`). ``out_dir`` receives:

    - ``images.u8``: raw uint8 rows (R, size, size), one per prepared pair;
    - ``reports.jsonl``: one JSON object per row, ``{"source", "report"[, "labels"]}``;
    - ``index.json``: format, size, row count, and for every dataset entry its source,
      status ("ok", "missing", "corrupt", "empty_report", "pending") and row.

    Re-running resumes: entries already "ok" (matched by source) are kept and not
    decoded again; the others are tried again, so a fixed file is picked up. A missing
    or corrupt image, or an empty report, is reported as it happens (on stderr), skipped,
    and counted in the returned summary and a final warning.

    Crash safety: rows are only appended; the data files are flushed and fsynced, then
    ``index.json`` is written atomically, every ``checkpoint_seconds`` and at the end
    (also when interrupted). The index is the truth: bytes past what it records (a
    crash mid-append) are ignored and cut off on the next run.

    One ``prepare`` at a time writes a folder: it holds a lock on
    ``out_dir/.prepare.lock`` while it runs, and a second one (another process or
    thread) raises :class:`StateError`. With the lock held, the temporary files of a
    run that was killed (``kill -9``, a power cut) can be nobody's: they are removed,
    with a warning saying how many bytes that freed.

    Parameters
    ----------
    dataset : PairedDataset
    out_dir : str or os.PathLike (created if needed)
    size : int in [1, MAX_IMAGE_SIZE], default 256
    workers : int, optional
        Decoding threads (Pillow and the resize release the GIL); default
        ``min(4, os.cpu_count())``.
    progress : bool, default True
        A tqdm progress bar and one stderr line per skipped entry.
    overwrite : bool, default False
        Start afresh, discarding what ``out_dir`` holds. The new files are written
        under temporary names and renamed over the old ones at the first commit, so a
        :class:`PreparedDataset` already open on the old cache goes on reading it.

    Returns
    -------
    PrepareSummary

    Raises ValueError when ``out_dir`` holds a cache of another size, or rows from
    sources (or with reports) this dataset does not have; use a new folder or
    ``overwrite=True``. Raises StateError while another prepare() writes ``out_dir``.
    """
    if not isinstance(dataset, PairedDataset):
        raise TypeError(
            f"dataset must be a PairedDataset (ArrayDataset, CSVDataset, ...), got "
            f"{type(dataset).__name__}"
        )
    size = _check_size(size)
    out_dir = os.fspath(out_dir)
    workers = min(4, os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers}")
    os.makedirs(out_dir, exist_ok=True)
    with _writing(out_dir) as locked:
        if locked:
            _remove_stale_staging(out_dir)
        return _prepare(
            dataset, out_dir, size, workers, progress, overwrite, checkpoint_seconds
        )


@contextlib.contextmanager
def _writing(out_dir):
    """Hold the exclusive lock on out_dir's lock file (yielding True), or raise
    StateError when another prepare() holds it (two would append to the same files).
    flock locks belong to the open file, so a thread of this process is refused too,
    and the kernel lets go when the holder dies, however it dies. On a file system
    without locks (some network and FUSE mounts) prepare runs unlocked, as it did
    before there was a lock, and yields False."""
    path = os.path.join(out_dir, _LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(
                f"another convirt prepare is writing {out_dir} (it holds {path}); "
                f"wait for it to finish or use another out_dir"
            ) from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def _remove_stale_staging(out_dir):
    """Remove the staging files of ours in out_dir (.tmp-images.u8-*, ...): under the
    lock, only a run that was killed can have left them."""
    stale = []
    for name in (_IMAGES_FILE, _REPORTS_FILE, _INDEX_FILE):
        stale += glob.glob(os.path.join(glob.escape(out_dir), f".tmp-{name}-*"))
    freed = 0
    for path in stale:
        try:
            size = os.lstat(path).st_size
            os.unlink(path)
        except OSError:
            continue
        freed += size
    if stale:
        warnings.warn(
            f"prepare removed {len(stale)} temporary files ({freed / 2**20:.1f} MiB) "
            f"that an interrupted run left in {out_dir}",
            stacklevel=3,
        )


def _prepare(dataset, out_dir, size, workers, progress, overwrite, checkpoint_seconds):
    from ._optional import progress_bar

    n = len(dataset)
    sources = [str(s) for s in dataset.sources]
    reports = list(dataset.reports)
    labels = getattr(dataset, "labels", None)
    label_names = getattr(dataset, "label_names", None)
    if labels is not None:
        labels = np.asarray(labels, np.float32).reshape(n, -1)
        if label_names is None:
            label_names = [f"label_{k}" for k in range(labels.shape[1])]
    # Entries are matched by (source, occurrence) on resume: one image may be listed
    # more than once (with different reports).
    seen = {}
    keys = []
    for source in sources:
        seen[source] = seen.get(source, 0) + 1
        keys.append((source, seen[source] - 1))

    index_path = os.path.join(out_dir, _INDEX_FILE)
    images_path = os.path.join(out_dir, _IMAGES_FILE)
    reports_path = os.path.join(out_dir, _REPORTS_FILE)
    old = None if overwrite else _read_index(index_path, missing_ok=True)
    if old is not None:
        if old["size"] != size:
            raise ValueError(
                f"{out_dir} holds images prepared at size {old['size']}, not "
                f"{size}; use another out_dir or overwrite=True"
            )
        old_names = old.get("label_names")
        if old["rows"] and old_names != (
            None if label_names is None else list(label_names)
        ):
            raise ValueError(
                f"{out_dir} was prepared with label_names {old_names}, this "
                f"dataset has {label_names}; use overwrite=True"
            )
    rows = old["rows"] if old else 0
    reports_bytes = old["reports_bytes"] if old else 0
    if old is None:
        # A fresh cache is written beside the old files and renamed over them at the
        # first commit: a PreparedDataset that maps the old images.u8 keeps its inode,
        # where truncating it in place would crash the reader (SIGBUS) or show it the
        # new images beside its old reports.
        staged = {path: _staging_file(path) for path in (images_path, reports_path)}
    else:
        staged = {}
        for path, committed in (
            (images_path, rows * size * size),
            (reports_path, reports_bytes),
        ):
            actual = os.path.getsize(path) if os.path.exists(path) else 0
            if actual < committed:
                raise ValueError(
                    f"{path} holds {actual} bytes but {index_path} records "
                    f"{committed}: the cache is damaged; use overwrite=True"
                )
            # Cut off anything written after the last committed index (a crash
            # mid-append); no reader maps those bytes.
            with open(path, "ab") as f:
                f.truncate(committed)

    done = {}
    if old:
        position = {key: k for k, key in enumerate(keys)}
        stray = []
        for entry in old["entries"]:
            if entry["status"] != "ok":
                continue
            k = position.get((entry["source"], entry.get("occurrence", 0)))
            if k is None:
                stray.append(entry["source"])
            else:
                done[k] = entry["row"]
        if stray:
            raise ValueError(
                f"{out_dir} holds {len(stray)} prepared images whose sources "
                f"are not in this dataset (e.g. {stray[0]!r}); use a new "
                f"out_dir or overwrite=True"
            )
        old_reports = _read_reports(reports_path, rows, reports_bytes)
        for k, row in done.items():
            if old_reports[row]["report"] != reports[k]:
                raise ValueError(
                    f"the report of {sources[k]!r} differs from the one "
                    f"prepared in {out_dir}; use overwrite=True to redo it"
                )

    entries = [
        {"source": source, "status": "pending"}
        if occurrence == 0
        else {"source": source, "occurrence": occurrence, "status": "pending"}
        for source, occurrence in keys
    ]
    for k, row in done.items():
        entries[k].update(status="ok", row=row)
    todo = [k for k in range(n) if k not in done]
    summary = {"missing": 0, "corrupt": 0, "empty_report": 0, "new": 0}
    failures = []

    def commit(complete):
        for f in (images_file, reports_file):
            f.flush()
            os.fsync(f.fileno())
        if staged:
            # The old index goes first, so that no reader ever pairs the new images
            # with the old reports; atomic_write below syncs the folder.
            if os.path.exists(index_path):
                os.unlink(index_path)
            for path, staging in staged.items():
                os.replace(staging, path)
            staged.clear()
        counts = {}
        for entry in entries:
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        header = {
            "format": PREPARED_FORMAT,
            "version": PREPARED_VERSION,
            "size": size,
            "dtype": "uint8",
            "rows": rows,
            "reports_bytes": reports_bytes,
            "complete": complete,
            "label_names": None if label_names is None else list(label_names),
            "counts": counts,
        }
        # One entry per line: readable and greppable (grep '"corrupt"' index.json).
        text = (
            json.dumps(header)[:-1]
            + ',\n"entries": [\n'
            + ",\n".join(json.dumps(entry) for entry in entries)
            + "\n]}\n"
        )
        atomic_write(index_path, text.encode("utf-8"))  # readable as the data files

    def skip(k, status, message):
        summary[status] += 1
        entries[k].update(status=status, error=message)
        failures.append((sources[k], status, message))
        if progress:
            bar.write(f"convirt prepare: skipped {sources[k]}: {message}", file=sys.stderr)

    def load(k):
        try:
            return dataset.load_image(k, size=size), None
        except FileNotFoundError as error:
            return None, ("missing", str(error))
        except ImageDecodeError as error:
            return None, ("corrupt", str(error))

    bar = progress_bar(
        total=len(todo), desc="prepare", unit="img", disable=not progress, file=sys.stderr
    )
    last_commit = time.monotonic()
    with (
        open(staged.get(images_path, images_path), "ab") as images_file,
        open(staged.get(reports_path, reports_path), "ab") as reports_file,
        concurrent.futures.ThreadPoolExecutor(workers) as pool,
    ):
        try:
            pending = []
            queue = iter(todo)
            while True:
                while len(pending) < 4 * workers:
                    k = next(queue, None)
                    if k is None:
                        break
                    if not reports[k].strip():
                        pending.append((k, None))
                    else:
                        pending.append((k, pool.submit(load, k)))
                if not pending:
                    break
                k, future = pending.pop(0)
                if future is None:
                    skip(k, "empty_report", "the report is empty")
                else:
                    image, failure = future.result()
                    if failure is not None:
                        skip(k, *failure)
                    else:
                        _check_prepared_image(image, size, sources[k])
                        record = {"source": sources[k], "report": reports[k]}
                        if labels is not None:
                            record["labels"] = [
                                None if np.isnan(v) else float(v)
                                for v in np.asarray(labels[k], np.float64)
                            ]
                        line = (json.dumps(record) + "\n").encode("utf-8")
                        images_file.write(np.ascontiguousarray(image).tobytes())
                        reports_file.write(line)
                        entries[k].update(status="ok", row=rows)
                        entries[k].pop("error", None)
                        rows += 1
                        reports_bytes += len(line)
                        summary["new"] += 1
                bar.update(1)
                if time.monotonic() - last_commit >= checkpoint_seconds:
                    commit(complete=False)
                    last_commit = time.monotonic()
        except BaseException:
            for _, future in pending:
                if future is not None:
                    future.cancel()
            commit(complete=False)
            bar.close()
            raise
        commit(complete=True)
    bar.close()

    result = PrepareSummary(
        out_dir=out_dir,
        total=n,
        prepared=rows,
        kept=len(done),
        new=summary["new"],
        missing=summary["missing"],
        corrupt=summary["corrupt"],
        empty_report=summary["empty_report"],
        failures=failures,
    )
    if result.skipped:
        warnings.warn(
            f"prepare skipped {result.skipped} of {n} pairs: {result.missing} "
            f"missing, {result.corrupt} corrupt, {result.empty_report} empty "
            f"reports (listed in {index_path})",
            stacklevel=3,
        )
    return result


def _staging_file(path):
    """A new empty file beside path (the same folder, so that os.replace onto path is
    atomic) with the mode open() would give it."""
    fd, staging = tempfile.mkstemp(
        prefix=".tmp-" + os.path.basename(path) + "-", dir=os.path.dirname(path)
    )
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return staging


def _check_prepared_image(image, size, source):
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.shape != (size, size)
    ):
        raise TypeError(
            f"load_image({source!r}, size={size}) returned "
            f"{_describe(image)}; expected uint8 ({size}, {size})"
        )


def _read_index(path, missing_ok=False):
    """The index of a prepared cache, every field prepare() and PreparedDataset use
    checked for type and range (DataFileError naming the field otherwise)."""
    if not os.path.exists(path):
        if missing_ok:
            return None
        raise FileNotFoundError(
            f"no prepared dataset here: {path} does not exist (run convirt prepare first)"
        )
    raw = read_regular_file(path, DataFileError, "a prepared-dataset index (JSON)")
    try:
        index = json.loads(raw.decode("utf-8"))
    except ValueError as error:  # also UnicodeDecodeError
        raise DataFileError(f"{path} is not a readable index ({error})") from error
    if not isinstance(index, dict) or index.get("format") != PREPARED_FORMAT:
        raise DataFileError(f"{path} is not a convirt prepared-dataset index")
    if index.get("version") != PREPARED_VERSION:
        raise DataFileError(
            f"{path} has format version {index.get('version')}; this "
            f"convirt reads version {PREPARED_VERSION}"
        )

    def fail(field, expected):
        value = repr(index.get(field))
        raise DataFileError(f"{path}: field {field!r} must be {expected}, got {value[:60]}")

    def integer(value, low, high=None):
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value >= low
            and (high is None or value <= high)
        )

    if not integer(index.get("size"), 1, _MAX_PREPARED_SIZE):
        fail("size", f"an integer in [1, {_MAX_PREPARED_SIZE}]")
    for field in ("rows", "reports_bytes"):
        if not integer(index.get(field), 0):
            fail(field, "an integer >= 0")
    if not isinstance(index.get("complete"), bool):
        fail("complete", "true or false")
    names = index.get("label_names")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(name, str) for name in names)
    ):
        fail("label_names", "null or a list of strings")
    entries = index.get("entries")
    if not isinstance(entries, list):
        fail("entries", "a list")
    for k, entry in enumerate(entries):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("source"), str)
            and isinstance(entry.get("status"), str)
            and integer(entry.get("occurrence", 0), 0)
            and (entry["status"] != "ok" or integer(entry.get("row"), 0, index["rows"] - 1))
        ):
            raise DataFileError(
                f"{path}: entries[{k}] is {repr(entry)[:80]}; expected "
                "an object with a source, a status and, when the status "
                f"is ok, a row in [0, {index['rows']})"
            )
    return index


def _read_reports(path, rows, nbytes, label_names=None):
    """The first `rows` records of reports.jsonl (the `nbytes` the index committed),
    each checked: {"source": str, "report": str[, "labels": L numbers or nulls]}."""
    data = read_regular_file(path, DataFileError, "a reports.jsonl file")[:nbytes]
    if len(data) < nbytes:
        raise DataFileError(
            f"{path} is truncated: {len(data)} bytes, the index records {nbytes}"
        )
    records = []
    for line, text in enumerate(data.split(b"\n"), start=1):
        if not text:
            continue
        try:
            record = json.loads(text.decode("utf-8"))
        except ValueError as error:
            raise DataFileError(
                f"{path}, line {line}: not a JSON record ({error})"
            ) from None
        labels = record.get("labels") if isinstance(record, dict) else None
        if not (
            isinstance(record, dict)
            and isinstance(record.get("report"), str)
            and isinstance(record.get("source"), str)
            and (
                label_names is None
                or (
                    isinstance(labels, list)
                    and len(labels) == len(label_names)
                    and all(
                        v is None
                        or (isinstance(v, (int, float)) and not isinstance(v, bool))
                        for v in labels
                    )
                )
            )
        ):
            expected = (
                '{"source": str, "report": str'
                + (
                    ""
                    if label_names is None
                    else f', "labels": {len(label_names)} numbers or nulls'
                )
                + "}"
            )
            raise DataFileError(f"{path}, line {line}: expected {expected}")
        records.append(record)
    if len(records) != rows:
        raise DataFileError(f"{path} has {len(records)} reports, the index records {rows}")
    return records


class PreparedDataset(PairedDataset):
    """The cache written by :func:`prepare`, read in place.

    Parameters
    ----------
    out_dir : str or os.PathLike
    allow_incomplete : bool, default False
        Open a cache whose preparation was interrupted (its committed rows only).

    Attributes
    ----------
    images : numpy.memmap, uint8, read-only, shape (N, size, size)
        Row i pairs with ``reports[i]``; slicing and fancy indexing read from disk.
    reports : list of N str
    sources : list of N str, the original image paths
    labels : float32 (N, L) with NaN for unknown, or None
    label_names : list of L str, or None
    size : int
    index : dict, the whole index (every entry's status, including skipped ones)
    """

    def __init__(self, out_dir, allow_incomplete=False):
        out_dir = os.fspath(out_dir)
        index = _read_index(os.path.join(out_dir, _INDEX_FILE))
        if not index.get("complete") and not allow_incomplete:
            raise ValueError(
                f"{out_dir} is incomplete (preparation was interrupted); run "
                f"prepare again to resume, or pass allow_incomplete=True"
            )
        self.out_dir = out_dir
        self.index = index
        self.size = size = index["size"]
        rows = index["rows"]
        images_path = os.path.join(out_dir, _IMAGES_FILE)
        needed = rows * size * size
        actual = os.path.getsize(images_path) if os.path.exists(images_path) else -1
        if actual < needed:
            raise ValueError(
                f"{images_path} holds {max(actual, 0)} bytes; the index "
                f"records {rows} images of {size}x{size} = {needed} bytes"
            )
        if rows:
            self.images = np.memmap(
                images_path, dtype=np.uint8, mode="r", shape=(rows, size, size)
            )
        else:
            self.images = np.zeros((0, size, size), np.uint8)
        records = _read_reports(
            os.path.join(out_dir, _REPORTS_FILE),
            rows,
            index["reports_bytes"],
            index["label_names"],
        )
        self.reports = [r["report"] for r in records]
        self.sources = [r["source"] for r in records]
        self.label_names = index.get("label_names")
        if self.label_names is not None:
            self.labels = np.array(
                [[np.nan if v is None else v for v in r["labels"]] for r in records],
                dtype=np.float32,
            ).reshape(rows, len(self.label_names))

    def _load(self, index, size):
        image = self.images[index]
        if size is None or size == self.size:
            return image
        return resize_center_crop(np.asarray(image), size)

    def __getitem__(self, index):
        index = self._check_index(index)
        return self.images[index], self.reports[index]

    def __repr__(self):
        return f"PreparedDataset({self.out_dir!r}, n={len(self)}, size={self.size})"
