"""One exception hierarchy: the core's failures arrive as typed errors created by the
extension, and the library catches them by type, never by message text."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tiny

import convirt
from convirt import errors


def test_the_hierarchy():
    for name in (
        "NonFiniteError",
        "StateError",
        "CheckpointError",
        "DataFileError",
        "ImageDecodeError",
        "TrainingDiverged",
    ):
        assert issubclass(getattr(convirt, name), convirt.ConvirtError), name
        assert getattr(errors, name) is getattr(convirt, name)
    # Callers who caught the built-in types before still catch them.
    assert issubclass(convirt.NonFiniteError, ValueError)
    assert issubclass(convirt.StateError, RuntimeError)
    assert issubclass(convirt.TrainingDiverged, (convirt.NonFiniteError, RuntimeError))
    assert issubclass(convirt.CheckpointError, ValueError)
    assert convirt.NonFiniteError.__module__ == "convirt"
    assert convirt.NonFiniteError is convirt._core.NonFiniteError  # created once, in C


def test_nonfinite_inputs_raise_nonfinite_error():
    v = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    bad = v.copy()
    bad[1, 2] = np.inf
    with pytest.raises(convirt.NonFiniteError, match="row 1 of the first input"):
        convirt.ContrastiveLoss()(bad, v)
    images = np.zeros((2, 32, 32), np.float32)
    images[0, 3, 3] = np.nan
    with pytest.raises(convirt.NonFiniteError, match="NaN"):
        convirt.Encoder.resnet18().encode(images)
    params = [np.zeros(5, np.float32)]
    grads = [np.array([0, 0, np.nan, 0, 0], np.float32)]
    with pytest.raises(convirt.NonFiniteError, match="non-finite gradient"):
        convirt.Adam(params, grads).step()


def test_a_zero_row_is_a_value_error_not_a_nonfinite_one():
    v = np.ones((4, 8), np.float32)
    v[2] = 0
    with pytest.raises(ValueError, match="row 2 of the first input has a zero") as info:
        convirt.ContrastiveLoss()(v, np.ones((4, 8), np.float32))
    assert not isinstance(info.value, convirt.NonFiniteError)


def test_call_order_errors_are_state_errors():
    encoder = convirt.Encoder.resnet18()
    encoder.encode(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(convirt.StateError, match="training"):
        encoder.backward(d_features=np.zeros((2, 512), np.float32))


def test_trainer_catches_nonfinite_by_type_not_by_message(tiny_towers):
    """A NaN embedding (a NaN weight in the image head) and a NaN gradient behind a
    finite loss both stop training with TrainingDiverged, before any update."""
    image, text = tiny_towers
    trainer = convirt.Trainer(image, text, image_size=32, progress=False)
    images, reports = tiny.pairs(4, 32)
    bias = image.parameters()["projection.2.bias"]
    saved = bias[0]
    bias[0] = np.nan  # v becomes NaN: the loss refuses its rows
    with pytest.raises(convirt.TrainingDiverged):
        trainer.step(images, reports)
    bias[0] = saved

    class NaNGradients:  # the loss is finite, one gradient is not
        def __init__(self, adam):
            self.adam = adam

        def step(self, **kwargs):
            text.flat_gradients[-1] = np.nan
            return self.adam.step(**kwargs)

        def __getattr__(self, name):
            return getattr(self.adam, name)

    trainer.optimizer = NaNGradients(trainer.optimizer)
    before = image.flat_parameters.copy(), text.flat_parameters.copy()
    with pytest.raises(convirt.TrainingDiverged, match="non-finite gradient"):
        trainer.step(images, reports)
    np.testing.assert_array_equal(image.flat_parameters, before[0])
    np.testing.assert_array_equal(text.flat_parameters, before[1])


def test_an_unbuilt_checkout_says_to_build_the_extension(tmp_path):
    """The package's Python files without the built .so files (a fresh clone): importing
    it names the missing extension and the command that builds it, rather than a
    ModuleNotFoundError from deep inside or a 'circular import'."""
    package = os.path.dirname(convirt.__file__)
    shutil.copytree(
        package,
        tmp_path / "convirt",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    assert not list((tmp_path / "convirt").glob("*.so"))
    # -S: no site-packages .pth files, so no editable-install finder can supply another
    # checkout's extension; the rest of sys.path (NumPy and the like) is kept, minus
    # any folder holding a convirt package.
    path = [str(tmp_path)] + [
        p for p in sys.path if p and not os.path.exists(os.path.join(p, "convirt"))
    ]
    for statement in (
        "import convirt",
        "import convirt.reports",
        "from convirt import cli",
    ):
        result = subprocess.run(
            [sys.executable, "-S", "-c", statement],
            check=False,
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(path)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            "ModuleNotFoundError: the C extension convirt._core is not built: "
            "run `make build` (or pip install -e .)"
        ), result.stderr
        assert "circular" not in result.stderr
