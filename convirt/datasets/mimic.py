"""MIMIC-CXR-JPG: its metadata, split and CheXpert tables, its image tree and its reports."""

import os
import re
import warnings

import numpy as np

from ..errors import DataFileError
from ..reports import _sections, format_sections
from ..tables import check_row, column_index, parse_label, read_table
from .paired import _FileDataset

__all__ = ["MIMICCXRDataset"]


_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validate": "validate",
    "val": "validate",
    "valid": "validate",
    "validation": "validate",
    "test": "test",
}


# MIMIC-CXR ids: subjects and studies are numbers, DICOM ids hexadecimal groups joined by
# '-' (letters, digits, '.', '_' and '-' are accepted; never a path separator).
_MIMIC_NUMBER = re.compile(r"[0-9]{1,20}")
_MIMIC_DICOM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class MIMICCXRDataset(_FileDataset):
    """MIMIC-CXR-JPG: one pair per image, the report of the image's study.

    Parameters
    ----------
    root : str or os.PathLike
        The MIMIC-CXR-JPG folder: ``mimic-cxr-2.0.0-metadata.csv(.gz)``,
        ``mimic-cxr-2.0.0-split.csv(.gz)``, optionally ``mimic-cxr-2.0.0-chexpert.csv
        (.gz)``, and ``files/pXX/pYYYYYYY/sZZZZZZZZ/<dicom_id>.jpg``.
    split : {"train", "validate", "test"} or None, default "train"
        From the split CSV ("val"/"validation" also accepted); None keeps all images.
    views : sequence of str or None, default ("PA", "AP")
        ViewPosition values kept (frontal views); None keeps every view.
    reports_root : str, optional
        Where the reports tree (``files/pXX/pYYYYYYY/sZZZZZZZZ.txt``, from MIMIC-CXR's
        ``mimic-cxr-reports.zip``) lives. Default: ``root``, then
        ``root/mimic-cxr-reports``.
    sections : sequence, default ("findings", "impression")
        The report sections kept (see :func:`extract_sections`), written as
        ``"FINDINGS: ...\\nIMPRESSION: ..."``. A study with no report file gets ``""``
        and is counted in ``.missing_reports``; :func:`prepare` skips empty reports.
        A report with neither section gives its last paragraph as the impression; such
        reports are counted in ``.unsectioned_reports`` and a warning says how many.

    ``.labels`` holds the CheXpert labels of the study (1, 0, -1 uncertain, NaN blank)
    when the chexpert CSV is present. ``.study_ids`` and ``.subject_ids`` are kept.
    """

    def __init__(
        self,
        root,
        split="train",
        views=("PA", "AP"),
        reports_root=None,
        sections=("findings", "impression"),
    ):
        root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(root):
            raise FileNotFoundError(f"MIMIC-CXR-JPG folder not found: {root}")
        if split is not None:
            if split not in _SPLIT_ALIASES:
                raise ValueError(
                    f"split must be 'train', 'validate', 'test' or None; got {split!r}"
                )
            split = _SPLIT_ALIASES[split]
        for section in sections:
            if section not in ("findings", "impression"):
                raise ValueError(
                    f"sections may be 'findings' and 'impression'; got {section!r}"
                )
        self.root = root
        self.split = split
        self.views = None if views is None else tuple(str(v).upper() for v in views)
        metadata = self._table("metadata")
        splits = self._table("split") if split is not None else None
        chexpert = self._table("chexpert", required=False)

        columns, rows, lines = read_table(metadata)
        at = {
            name: column_index(columns, name, metadata, "metadata")
            for name in ("dicom_id", "subject_id", "study_id", "ViewPosition")
        }
        wanted = None
        if splits is not None:
            split_columns, split_rows, split_lines = read_table(splits)
            dicom_at = column_index(split_columns, "dicom_id", splits, "split")
            split_at = column_index(split_columns, "split", splits, "split")
            for line, row in zip(split_lines, split_rows):
                check_row(row, (dicom_at, split_at), splits, line, split_columns)
            wanted = {
                r[dicom_at].strip() for r in split_rows if r[split_at].strip() == split
            }

        study_labels, self.label_names = {}, None
        if chexpert is not None:
            label_columns, label_rows, label_lines = read_table(chexpert)
            study_at = column_index(label_columns, "study_id", chexpert, "chexpert")
            names = [c for c in label_columns if c not in ("subject_id", "study_id")]
            name_at = [label_columns.index(c) for c in names]
            for line, row in zip(label_lines, label_rows):
                check_row(row, (study_at,), chexpert, line, label_columns)
                study_labels[row[study_at].strip()] = [
                    parse_label(
                        row[k] if k < len(row) else "",
                        chexpert,
                        line,
                        label_columns[k],
                        blank=np.nan,
                    )
                    for k in name_at
                ]
            self.label_names = names

        report_roots = (
            [reports_root]
            if reports_root is not None
            else [root, os.path.join(root, "mimic-cxr-reports")]
        )
        self.sources, self.reports, self.study_ids, self.subject_ids = [], [], [], []
        self.missing_reports = 0
        self.unsectioned_reports = 0
        labels = []
        report_cache = {}
        for line, row in zip(lines, rows):
            check_row(row, at.values(), metadata, line, columns)
            dicom_id = row[at["dicom_id"]].strip()
            view = row[at["ViewPosition"]].strip().upper()
            if self.views is not None and view not in self.views:
                continue
            if wanted is not None and dicom_id not in wanted:
                continue
            subject = row[at["subject_id"]].strip()
            study = row[at["study_id"]].strip()
            # The ids become path components: they must not lead out of the root.
            for field, value, pattern in (
                ("dicom_id", dicom_id, _MIMIC_DICOM_ID),
                ("subject_id", subject, _MIMIC_NUMBER),
                ("study_id", study, _MIMIC_NUMBER),
            ):
                if not pattern.fullmatch(value) or ".." in value:
                    raise DataFileError(
                        f"{metadata}, line {line}: {field} {value[:80]!r} is not a "
                        f"MIMIC-CXR id (expected {pattern.pattern}); as a path it could "
                        f"lead outside {root}"
                    )
            folder = os.path.join("files", f"p{subject[:2]}", f"p{subject}")
            self.sources.append(os.path.join(root, folder, f"s{study}", dicom_id + ".jpg"))
            if study not in report_cache:
                report, unsectioned = self._report(report_roots, folder, study, sections)
                report_cache[study] = report
                self.missing_reports += not report
                self.unsectioned_reports += unsectioned
            self.reports.append(report_cache[study])
            self.study_ids.append(study)
            self.subject_ids.append(subject)
            if self.label_names is not None:
                labels.append(study_labels.get(study, [np.nan] * len(self.label_names)))
        if self.label_names is not None:
            self.labels = np.asarray(labels, np.float32).reshape(
                len(self.sources), len(self.label_names)
            )
        if self.unsectioned_reports:
            warnings.warn(
                f"{self.unsectioned_reports} of {len(report_cache)} MIMIC-CXR "
                "reports have neither a FINDINGS nor an IMPRESSION section; "
                "their last paragraph is used as the impression "
                "(.unsectioned_reports counts them)",
                stacklevel=2,
            )

    def _table(self, kind, required=True):
        for suffix in (".csv.gz", ".csv"):
            for version in ("2.0.0", "2.1.0"):
                path = os.path.join(self.root, f"mimic-cxr-{version}-{kind}{suffix}")
                if os.path.isfile(path):
                    return path
        if required:
            raise FileNotFoundError(
                f"no mimic-cxr-2.0.0-{kind}.csv(.gz) in {self.root}; "
                f"is this the MIMIC-CXR-JPG folder?"
            )
        return None

    @staticmethod
    def _report(report_roots, folder, study, sections):
        """(the kept sections as text, whether the report had no FINDINGS or
        IMPRESSION heading), or (None, False) when the study has no report file."""
        for base in report_roots:
            path = os.path.join(base, folder, f"s{study}.txt")
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    found, unsectioned = _sections(f.read())
                return format_sections({key: found[key] for key in sections}), unsectioned
        return "", False

    def __repr__(self):
        return (
            f"MIMICCXRDataset({self.root!r}, split={self.split!r}, "
            f"views={self.views!r}, n={len(self)})"
        )
