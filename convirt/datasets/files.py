"""Datasets whose images are files listed in a table or found in a folder."""

import os
import warnings

import numpy as np

from ..images import IMAGE_EXTENSIONS
from ..tables import column_index, parse_label, read_table
from .paired import _FileDataset

__all__ = ["CSVDataset", "FolderDataset"]


class CSVDataset(_FileDataset):
    """Pairs listed in a CSV or TSV file: one row per image.

    Parameters
    ----------
    path : str or os.PathLike
        The table (``.gz`` allowed). Comma or tab is detected from the header line
        (more tabs than commas -> tab) unless ``delimiter`` is given. Quoted fields may
        hold commas and line breaks.
    image_column, report_column : str
        Names of the column with image paths and the one with report text.
    root : str, optional
        Folder that relative image paths are resolved against; default the CSV's folder.
    label_columns : sequence of str, optional
        Numeric columns read into ``.labels`` (float32; blank -> NaN).
    delimiter : str, optional

    A wrong column name raises ValueError listing the columns found. A file that is not
    UTF-8, a truncated .gz, a stray quote (which would merge every later row into one
    report) or a row with more non-empty fields than the header has columns (an
    unquoted comma in a report) raises :class:`DataFileError` with the line; a short
    row gets empty fields. Fields may be of any length. Missing image files are not
    checked here: :func:`prepare` reports and skips them.
    """

    def __init__(
        self,
        path,
        image_column="image",
        report_column="report",
        root=None,
        label_columns=None,
        delimiter=None,
    ):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"CSV file not found: {path}")
        columns, rows, lines = read_table(path, delimiter)
        image_at = column_index(columns, image_column, path, "image")
        report_at = column_index(columns, report_column, path, "report")
        label_at = [
            column_index(columns, name, path, "label") for name in (label_columns or ())
        ]
        base = os.path.abspath(root if root is not None else os.path.dirname(path) or ".")
        self.path = path
        self.root = base
        self.sources, self.reports = [], []
        self._empty_paths = set()
        labels = []
        for line, row in zip(lines, rows):
            row = row + [""] * (len(columns) - len(row))
            image_path = row[image_at].strip()
            if not image_path:
                self._empty_paths.add(len(self.sources))
                self.sources.append(f"<empty image path on line {line} of {path}>")
            else:
                self.sources.append(os.path.join(base, image_path))
            self.reports.append(row[report_at])
            if label_at:
                labels.append(
                    [
                        parse_label(row[k], path, line, columns[k], blank=np.nan)
                        for k in label_at
                    ]
                )
        if label_at:
            self.labels = np.asarray(labels, np.float32).reshape(len(rows), len(label_at))
            self.label_names = list(label_columns)

    def _load(self, index, size):
        if index in self._empty_paths:
            raise FileNotFoundError(f"no image: {self.sources[index]}")
        return super()._load(index, size)

    def __repr__(self):
        return f"CSVDataset({self.path!r}, n={len(self)})"


class FolderDataset(_FileDataset):
    """Pairs from a folder: every image file (``.png .jpg .jpeg .tif .tiff .bmp .dcm
    .dicom``, searched recursively, sorted by path) with its report in a text file of
    the same stem beside it (``scan_001.png`` + ``scan_001.txt``).

    Parameters
    ----------
    folder : str or os.PathLike
    report_suffix : str, default ".txt"
    missing_reports : {"error", "skip"}, default "error"
        What to do with images that have no report file: raise ValueError naming them,
        or leave them out with a warning that counts them (``.skipped`` lists them).
    """

    def __init__(self, folder, report_suffix=".txt", missing_reports="error"):
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"image folder not found: {folder}")
        if missing_reports not in ("error", "skip"):
            raise ValueError(
                f"missing_reports must be 'error' or 'skip'; got {missing_reports!r}"
            )
        self.folder = os.path.abspath(folder)
        images = []
        for directory, _, files in os.walk(self.folder):
            for name in files:
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    images.append(os.path.join(directory, name))
        images.sort()
        self.sources, self.reports, self.skipped = [], [], []
        for image in images:
            report_path = os.path.splitext(image)[0] + report_suffix
            if not os.path.isfile(report_path):
                self.skipped.append(image)
                continue
            with open(report_path, encoding="utf-8", errors="replace") as f:
                self.reports.append(f.read().strip())
            self.sources.append(image)
        if self.skipped:
            examples = ", ".join(os.path.relpath(p, self.folder) for p in self.skipped[:3])
            message = (
                f"{len(self.skipped)} of {len(images)} images in {self.folder} have "
                f"no {report_suffix} report beside them (e.g. {examples})"
            )
            if missing_reports == "error":
                raise ValueError(
                    message + "; pass missing_reports='skip' to leave them out"
                )
            warnings.warn(message + "; they are left out", stacklevel=2)
        if not images:
            warnings.warn(f"no image files found in {self.folder}", stacklevel=2)

    def __repr__(self):
        return f"FolderDataset({self.folder!r}, n={len(self)})"
