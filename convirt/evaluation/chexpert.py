"""The CheXpert 8x200 retrieval protocol read from its CSV files, with the package's one
table reader (so the files get its checks: a FIFO is refused, text that is not UTF-8 or
a stray quote is a DataFileError naming the file and the line)."""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..tables import parse_label, read_table
from .retrieval import retrieval

__all__ = ["CHEXPERT_LABELS", "RetrievalSet", "read_chexpert_8x200"]

# The 14 observations of the CheXpert labeler, in the column order of CheXpert's CSVs.
CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)


@dataclass(eq=False)
class RetrievalSet:
    """A retrieval protocol read from disk: queries (image paths or report texts) with
    their categories, candidate image paths and the candidates' labels for those
    categories. Encode ``queries`` and ``candidate_paths``, then call :meth:`evaluate`.
    """

    root: str
    query_kind: str  # 'image' or 'text'
    queries: list  # image paths (absolute) or texts
    query_categories: np.ndarray  # (Q,) index into category_names
    category_names: list
    candidate_paths: list  # absolute paths
    candidate_labels: np.ndarray  # (M, len(category_names)) int8, 1 = positive

    def evaluate(self, query_embeddings, candidate_embeddings, *, ks=(5, 10, 50)):
        """:func:`retrieval` on this set's categories and labels."""
        return retrieval(
            query_embeddings,
            self.query_categories,
            candidate_embeddings,
            self.candidate_labels,
            ks=ks,
            category_names=self.category_names,
        )

    def __repr__(self):
        return (
            f"RetrievalSet({self.query_kind} queries: {len(self.queries)} in "
            f"{len(self.category_names)} categories {self.category_names}; candidates: "
            f"{len(self.candidate_paths)} images under {self.root})"
        )


def _resolve_csv(path, root):
    path = Path(path)
    tried = [path] if path.is_absolute() else [root / path, path]
    for candidate in tried:
        if candidate.exists():  # the reader refuses what is not a regular file
            return candidate
    raise FileNotFoundError(f"CSV file not found; tried {', '.join(str(t) for t in tried)}")


def _read_csv(path, required, one_of=None):
    """(header, rows as dicts, the line each row starts on) of a protocol CSV, read by
    the package's table reader, with a clear error when columns are missing."""
    header, rows, lines = read_table(path, delimiter=",")
    missing = [c for c in required if c not in header]
    if missing or (one_of and not any(c in header for c in one_of)):
        want = list(required) + ([" or ".join(one_of)] if one_of else [])
        raise ValueError(f"{path} must have the columns {want}; its header is {header}")
    if not rows:
        raise ValueError(f"{path} has a header but no rows")
    return (
        header,
        [dict(zip(header, row + [""] * (len(header) - len(row)))) for row in rows],
        lines,
    )


def _resolve_image(path, root):
    """root/path, or root's parent/path when the CSV's paths start with root's own name
    (CheXpert's 'CheXpert-v1.0/train/...' under a root that is CheXpert-v1.0)."""
    relative = Path(path)
    if relative.is_absolute():
        return relative
    direct = root / relative
    if not direct.exists() and relative.parts and relative.parts[0] == root.name:
        parent = root.parent / relative
        if parent.exists():
            return parent
    return direct


def _check_files_exist(paths, csv_path, root):
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(str(p) for p in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} image files listed in "
            f"{csv_path} are missing (root {root}): {shown}{more}"
        )


def _parse_label(value, uncertain, path, line, column):
    """1 or 0: a candidate's label for a category. Blank cells (the report does not
    mention the finding) are negative; -1 (uncertain) counts as ``uncertain`` says."""
    number = parse_label(value, path, line, column, blank=0, values=(1, 0, -1))
    if number == -1:
        return 1 if uncertain == "positive" else 0
    return int(number)


def read_chexpert_8x200(
    root, query_csv, candidate_csv, *, uncertain="negative", check_files=True
):
    """Read a CheXpert retrieval protocol (the paper's 8x200 set) from CSV files.

    Parameters
    ----------
    root : the CheXpert folder the image paths are relative to. A path that starts with
        the root's own name (``CheXpert-v1.0/train/...`` under ``.../CheXpert-v1.0``) is
        also found.
    query_csv : CSV with columns ``Variable,Path`` (image queries) or ``Variable,Text``
        (text queries); Variable is the query's category, a CheXpert label name.
        Relative names are looked up under ``root`` first.
    candidate_csv : CSV with a ``Path`` column and a column per query category, named
        as in CheXpert (:data:`CHEXPERT_LABELS`); other columns are ignored.
    uncertain : how a -1 (uncertain) label counts: 'negative' (default; only certain
        positives are hits) or 'positive' (the U-Ones policy). Blank cells (finding not
        mentioned) are negative. 1.0 / 0.0 / -1.0 are accepted as well.
        The files are read by :func:`convirt.tables.read_table`: a FIFO is refused,
        text that is not UTF-8 and a stray quote raise DataFileError (a ValueError)
        naming the file and the line.
    check_files : check that every image file exists (FileNotFoundError listing the
        missing ones).

    Returns
    -------
    RetrievalSet (categories in order of first appearance in the query CSV).
    """
    if uncertain not in ("negative", "positive"):
        raise ValueError(f"uncertain must be 'negative' or 'positive', got {uncertain!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CheXpert root folder {root} does not exist")
    query_path = _resolve_csv(query_csv, root)
    header, rows, lines = _read_csv(query_path, ["Variable"], one_of=("Path", "Text"))
    if "Path" in header and "Text" in header:
        raise ValueError(
            f"{query_path} has both a Path and a Text column: image queries "
            "have Variable,Path and text queries Variable,Text"
        )
    kind, column = ("image", "Path") if "Path" in header else ("text", "Text")
    names, codes, queries = [], [], []
    for line, row in zip(lines, rows):
        variable = (row.get("Variable") or "").strip()
        value = (row.get(column) or "").strip()
        if not variable or not value:
            raise ValueError(f"{query_path}, line {line}: empty Variable or {column}")
        if variable not in names:
            names.append(variable)
        codes.append(names.index(variable))
        queries.append(value)
    if kind == "image":
        queries = [str(_resolve_image(q, root)) for q in queries]
        if check_files:
            _check_files_exist(queries, query_path, root)

    candidate_path = _resolve_csv(candidate_csv, root)
    _, rows, lines = _read_csv(candidate_path, ["Path"] + names)
    labels = np.zeros((len(rows), len(names)), dtype=np.int8)
    paths = []
    for i, (line, row) in enumerate(zip(lines, rows)):
        value = (row.get("Path") or "").strip()
        if not value:
            raise ValueError(f"{candidate_path}, line {line}: empty Path")
        paths.append(str(_resolve_image(value, root)))
        for j, name in enumerate(names):
            labels[i, j] = _parse_label(
                row.get(name), uncertain, candidate_path, line, name
            )
    if check_files:
        _check_files_exist(paths, candidate_path, root)
    return RetrievalSet(
        root=str(root),
        query_kind=kind,
        queries=queries,
        query_categories=np.array(codes, dtype=np.int64),
        category_names=names,
        candidate_paths=paths,
        candidate_labels=labels,
    )
