"""convirt.tables, the one CSV/TSV and label reader: the blank-cell policy is an
argument, and the CheXpert 8x200 protocol files get the checks every dataset table
gets (not a regular file, not UTF-8, a stray quote, gzip)."""

import gzip
import math
import os

import numpy as np
import pytest

from convirt import evaluation
from convirt.errors import DataFileError
from convirt.tables import parse_label, read_table


def test_blank_is_what_the_reader_says():
    assert math.isnan(parse_label("", "t.csv", 2, "Edema", blank=math.nan))
    assert parse_label("  ", "t.csv", 2, "Edema", blank=0) == 0
    assert parse_label(None, "t.csv", 2, "Edema", blank=0) == 0
    assert parse_label("-1.0", "t.csv", 2, "Edema", blank=0, values=(1, 0, -1)) == -1
    assert parse_label("0.25", "t.csv", 2, "Edema", blank=0) == 0.25
    with pytest.raises(TypeError, match="blank"):
        parse_label("", "t.csv", 2, "Edema")  # no default: every reader chooses
    with pytest.raises(
        DataFileError,
        match=r"t\.csv, line 2: label column 'Edema' holds "
        r"'yes', not a number",
    ):
        parse_label("yes", "t.csv", 2, "Edema", blank=0)
    with pytest.raises(
        DataFileError,
        match=r"t\.csv, line 7, column 'Edema': label '2' is "
        r"not 1, 0, -1 or blank",
    ):
        parse_label("2", "t.csv", 7, "Edema", blank=0, values=(1, 0, -1))


def write_protocol(root, candidates):
    """CheXpert 8x200-style files: two text queries and the candidates' CSV (bytes)."""
    root.mkdir(exist_ok=True)
    (root / "queries.csv").write_text(
        "Variable,Text\nEdema,mild edema\nCardiomegaly,enlarged heart\n"
    )
    (root / "candidates.csv").write_bytes(candidates)
    return root


CANDIDATES = b"Path,Edema,Cardiomegaly\na.jpg,1.0,\nb.jpg,-1.0,0\nc.jpg,,1\n"


def test_chexpert_reads_through_the_table_reader(tmp_path):
    root = write_protocol(tmp_path / "chexpert", CANDIDATES)
    protocol = evaluation.read_chexpert_8x200(
        root, "queries.csv", "candidates.csv", check_files=False
    )
    np.testing.assert_array_equal(protocol.candidate_labels, [[1, 0], [0, 0], [0, 1]])
    # the same file gzipped (the reader decompresses .gz)
    (root / "candidates.csv.gz").write_bytes(gzip.compress(CANDIDATES))
    again = evaluation.read_chexpert_8x200(
        root, "queries.csv", "candidates.csv.gz", check_files=False
    )
    np.testing.assert_array_equal(again.candidate_labels, protocol.candidate_labels)


def test_chexpert_refuses_a_fifo(tmp_path):
    root = write_protocol(tmp_path / "chexpert", CANDIDATES)
    os.unlink(root / "candidates.csv")
    os.mkfifo(root / "candidates.csv")
    with pytest.raises(DataFileError, match=r"candidates\.csv.*not a regular file"):
        evaluation.read_chexpert_8x200(
            root, "queries.csv", "candidates.csv", check_files=False
        )


def test_chexpert_refuses_latin1_naming_the_line(tmp_path):
    root = write_protocol(
        tmp_path / "chexpert", CANDIDATES + "é.jpg,1,0\n".encode("latin-1")
    )
    with pytest.raises(DataFileError, match=r"candidates\.csv, line 5: .*not UTF-8"):
        evaluation.read_chexpert_8x200(
            root, "queries.csv", "candidates.csv", check_files=False
        )


def test_chexpert_refuses_a_stray_quote(tmp_path):
    root = write_protocol(tmp_path / "chexpert", CANDIDATES + b'"d.jpg,1,0\ne.jpg,0,1\n')
    with pytest.raises(DataFileError, match=r"candidates\.csv, line 5: .*not well-formed"):
        evaluation.read_chexpert_8x200(
            root, "queries.csv", "candidates.csv", check_files=False
        )


def test_datasets_and_protocols_read_alike(tmp_path):
    # A CSVDataset's labels keep blank as unknown (NaN); the protocol's count it negative.
    from convirt.datasets import CSVDataset

    root = write_protocol(tmp_path / "chexpert", CANDIDATES)
    columns, _, lines = read_table(root / "candidates.csv")
    assert columns == ["Path", "Edema", "Cardiomegaly"] and lines == [2, 3, 4]
    with open(root / "pairs.csv", "w") as f:
        f.write("image,report,Edema\na.jpg,Clear.,\nb.jpg,Edema.,1\n")
    labels = CSVDataset(root / "pairs.csv", label_columns=["Edema"]).labels
    assert math.isnan(labels[0, 0]) and labels[1, 0] == 1
