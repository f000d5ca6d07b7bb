"""Optional packages: without pandas `convirt evaluate` still writes every file (its CSV
does not need pandas) and each to_frame() says what to install; a file that cannot be
written does not keep the others from being written; a flag whose work needs an optional
package is refused when the arguments are read; progress bars use tqdm.auto only when
ipywidgets imports."""

import csv
import importlib.abc
import io
import sys
import types

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from convirt import _optional, cli
from convirt import evaluation as ev
from convirt.embeddings import Embeddings
from convirt.experiments.compare import ComparisonTable


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def hide_pandas(monkeypatch):
    """`import pandas` raises ModuleNotFoundError, as where it is not installed (and
    sys.modules has no "pandas": scikit-learn looks there to recognise DataFrames)."""
    monkeypatch.setattr(sys, "meta_path", [_NoPandas(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "pandas", raising=False)


@pytest.fixture
def no_pandas(monkeypatch):
    hide_pandas(monkeypatch)


TINY_EVALUATE = [
    "evaluate",
    "--synthetic",
    "48",
    "--data-seed",
    "3",
    "--size",
    "32",
    "--rows",
    "random",
    "--fractions",
    "1",
    "--probe-seeds",
    "0",
    "--finetune-epochs",
    "1",
    "--finetune-batch-size",
    "8",
    "--ks",
    "2",
    "--val-share",
    "0.3",
    "--test-share",
    "0.3",
    "--no-progress",
    "--threads",
    "2",
]


def table():
    return ComparisonTable(
        rows=["chance", "random"],
        columns=["LP 100%", "I→I P@2"],
        groups=["linear probe", "image→image retrieval"],
        values=np.array([[0.5, 0.25], [0.625, 0.3]]),
        spreads=np.array([[np.nan, np.nan], [0.125, np.nan]]),
        metric="auc",
    )


def test_evaluate_without_pandas_writes_the_markdown_csv_and_png(
    no_pandas, tmp_path, capsys
):
    paths = {suffix: tmp_path / f"t.{suffix}" for suffix in ("md", "csv", "png")}
    code = cli.main(
        [
            *TINY_EVALUATE,
            "--markdown",
            str(paths["md"]),
            "--csv",
            str(paths["csv"]),
            "--png",
            str(paths["png"]),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert paths["md"].read_text(encoding="utf-8").startswith("| Method | LP 100% |")
    with open(paths["csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["method", "linear probe: LP 100%"]
    assert [r[0] for r in rows[1:]] == ["chance", "Random init"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_file_that_cannot_be_written_does_not_stop_the_others(tmp_path, capsys):
    blocked = tmp_path / "missing-folder" / "t.csv"
    png = tmp_path / "t.png"
    code = cli.main([*TINY_EVALUATE, "--csv", str(blocked), "--png", str(png)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"convirt evaluate: error: {blocked} not written" in captured.err
    assert "| Method |" in captured.out  # the table was printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_csv_without_pandas_is_the_frame_flattened(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    frame = table().to_frame()
    with monkeypatch.context() as hidden:
        hide_pandas(hidden)
        table().to_csv(tmp_path / "t.csv")
    written = pd.read_csv(tmp_path / "t.csv", index_col="method")
    assert list(written.columns) == [f"{group}: {name}" for group, name in frame.columns]
    np.testing.assert_array_equal(written.to_numpy(), frame.to_numpy())
    assert (tmp_path / "t.csv").read_text(encoding="utf-8").splitlines()[1] == (
        "chance,0.5,,0.25"
    )


def test_every_to_frame_without_pandas_says_what_to_install(no_pandas):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((40, 4))
    labels = np.arange(40) % 2
    probe = ev.linear_probe(
        features[:20], labels[:20], features[20:], labels[20:], fractions=(1.0,), seeds=(0,)
    )
    found = ev.retrieval(features[:4], [0, 1, 0, 1], features, np.eye(2)[labels], ks=(2,))
    embeddings = Embeddings(["a", "b"], np.zeros((2, 3), np.float32))
    for result, name in (
        (probe, "ProbeResult"),
        (found, "RetrievalResult"),
        (embeddings, "Embeddings"),
        (table(), "ComparisonTable"),
    ):
        with pytest.raises(
            ImportError, match=rf"{name}\.to_frame\(\) needs pandas.*pip install pandas"
        ):
            result.to_frame()


def test_a_flag_that_needs_a_missing_package_is_refused_before_any_work(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(SystemExit) as stop:
        cli.main(["export", str(tmp_path / "run"), str(tmp_path / "out"), "--onnx"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert (
        "--onnx needs onnx, which convirt does not install: pip install 'convirt[onnx]'"
        in err
    )
    assert not (tmp_path / "out").exists()


# ---- progress bars -----------------------------------------------------------------------


def test_progress_bars_are_plain_tqdm_without_ipywidgets(monkeypatch):
    from tqdm.std import tqdm as plain

    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    assert _optional.tqdm_class() is plain
    bar = _optional.progress_bar(range(3), file=io.StringIO())
    assert type(bar) is plain and list(bar) == [0, 1, 2]
    from tqdm.auto import tqdm as auto

    monkeypatch.setitem(sys.modules, "ipywidgets", types.ModuleType("ipywidgets"))
    assert _optional.tqdm_class() is auto


def test_no_module_draws_its_own_tqdm_auto_bar():
    import pathlib

    import convirt

    package = pathlib.Path(convirt.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "_optional.py" and "import tqdm" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_interactive_means_a_terminal_or_a_jupyter_kernel(monkeypatch):
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: None  # IPython imported, no shell running
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not _optional.interactive()
    kernel_shell = types.SimpleNamespace(kernel=object())  # Jupyter's ZMQ shell
    ipython.get_ipython = lambda: kernel_shell
    assert _optional.interactive()
