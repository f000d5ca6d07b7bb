"""The tutorial notebooks in notebooks/ run top to bottom without an error, at the small
size that CONVIRT_NOTEBOOK_SIZE=small selects, and are stored without outputs.

Each notebook runs in a fresh IPython kernel started from this interpreter
(sys.executable, through a kernel spec written to a temporary folder, so neither an
installed 'python3' kernel nor the PATH can pick another Python), with this test's
convirt first on the kernel's PYTHONPATH, matplotlib's Agg backend, and the notebook's
working directory in tmp_path (the files a notebook writes land there).
"""

import importlib.util
import os
import re
import time

import pytest

import convirt

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks"
)
NOTEBOOKS = [
    "01_quickstart.ipynb",
    "02_retrieval_and_tsne.ipynb",
    "03_bring_your_own_data.ipynb",
    "04_export.ipynb",
]
KERNEL_NAME = "convirt-test-python"
# Per cell. The small size takes about a minute per notebook on 2 cores; this only
# catches a hung kernel on a very busy machine.
CELL_TIMEOUT = 900


def kernel_manager(tmp_path):
    """A KernelManager whose kernel is `sys.executable -m ipykernel_launcher`."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path / "kernels"
    write_kernel_spec(str(kernels / KERNEL_NAME), overrides={"display_name": KERNEL_NAME})
    specs = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def kernel_environment(monkeypatch):
    """What the kernel inherits: the small size, no display, this convirt first."""
    monkeypatch.setenv("CONVIRT_NOTEBOOK_SIZE", "small")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("DISPLAY", raising=False)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(convirt.__file__)))
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", package_root + (os.pathsep + path if path else ""))


def stream_text(notebook):
    """Everything the cells of an executed notebook printed (stdout and stderr)."""
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )


def error_outputs(notebook):
    """(cell index, 'Name: message') of every error output in an executed notebook."""
    found = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                found.append((index, f"{output.get('ename')}: {output.get('evalue')}"))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    kernel_environment(monkeypatch)
    notebook = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        km=kernel_manager(tmp_path),
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{name}: a cell raised an error:\n{error}")
    seconds = time.perf_counter() - start
    assert error_outputs(notebook) == []
    # Progress bars draw as text where ipywidgets is missing, without tqdm's warning.
    assert "TqdmWarning" not in stream_text(notebook)
    # Every code cell ran, in order.
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))
    # The run time is reported, never asserted (the machine is shared).
    print(f"{name}: {seconds:.0f} s at CONVIRT_NOTEBOOK_SIZE=small")


def load_strip_outputs():
    spec = importlib.util.spec_from_file_location(
        "strip_outputs", os.path.join(NOTEBOOK_DIR, "strip_outputs.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_strip_outputs_clears_outputs_and_run_metadata(tmp_path):
    strip_outputs = load_strip_outputs()
    notebook = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "other", "display_name": "Other"}, "widgets": {}}
    )
    cell = nbformat.v4.new_code_cell(
        "print(1)",
        execution_count=3,
        metadata={"execution": {"iopub.status.idle": "x"}, "tags": ["keep"]},
    )
    cell.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    notebook.cells = [nbformat.v4.new_markdown_cell("# title"), cell]
    path = str(tmp_path / "dirty.ipynb")
    nbformat.write(notebook, path)
    assert not strip_outputs.is_clean(path)
    assert strip_outputs.main(["--check", path]) == 1
    assert strip_outputs.strip_file(path)
    clean = nbformat.read(path, as_version=4)
    assert clean.cells[1].outputs == [] and clean.cells[1].execution_count is None
    assert clean.cells[1].metadata == {"tags": ["keep"]}
    assert clean.cells[1].source == "print(1)"
    assert clean.cells[0].source == "# title"
    assert clean.metadata.kernelspec.name == "python3"
    assert "widgets" not in clean.metadata
    assert strip_outputs.is_clean(path)
    assert strip_outputs.main(["--check", path]) == 0
    assert not strip_outputs.strip_file(path)  # nothing left to change


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    path = os.path.join(NOTEBOOK_DIR, name)
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{name} is stored with outputs; run python notebooks/strip_outputs.py"
            )
    assert load_strip_outputs().is_clean(path), (
        f"{name} has run metadata; run python notebooks/strip_outputs.py"
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_no_placeholder_left(name):
    notebook = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    for index, cell in enumerate(notebook.cells):
        found = re.findall(r"\b(?:TBD|TODO|FIXME|XXX)\b", cell.source)
        assert not found, f"{name}, cell {index}: placeholder {found[0]!r}"
