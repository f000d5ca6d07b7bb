"""The binding's shape: convirt._core is the product, convirt._testing holds the tests'
single-layer entry points, both run on one copy of the C core (libconvirt), and every
type says where it can be imported from (repr, pickling and messages use that name)."""

import importlib

import numpy as np
import pytest

import convirt
from convirt import _core, _testing

TYPES = [
    _core.Adam,
    _core.ContrastiveLoss,
    _core.Encoder,
    _core.ImageAugment,
    _core.LinearHead,
    _core.LossResult,
    _core.ConvirtError,
    _core.NonFiniteError,
    _core.StateError,
    convirt.Encoder,
]


@pytest.mark.parametrize("cls", TYPES, ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_each_type_is_found_under_its_name(cls):
    module = importlib.import_module(cls.__module__)
    assert getattr(module, cls.__qualname__) is cls


def test_the_tests_entry_points_are_not_in_the_product():
    entry_points = {name for name in dir(_testing) if not name.startswith("__")}
    assert {"conv2d_forward", "layernorm_forward", "gemm_reference"} <= entry_points
    for name in entry_points - {"get_num_threads"}:
        assert not hasattr(_core, name) and not hasattr(_core, "_" + name), name
    assert not hasattr(_core, "_text_layers")
    a = np.ones((2, 2), np.float32)
    with pytest.raises(TypeError):
        _core.gemm(a, a, np.zeros((2, 2), np.float32), reference=True)


def test_both_modules_run_on_one_core():
    # One thread setting: raising it reaches _testing's calls too, which a second copy
    # of the core (compiled into each extension) would not see.
    before = convirt.get_num_threads()
    try:
        for n in (1, 3, 2):
            convirt.set_num_threads(n)
            assert _testing.get_num_threads() == n == convirt.get_num_threads()
    finally:
        convirt.set_num_threads(before)
    # One error state: a failure in _testing's call arrives with the core's message.
    x = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match="stride"):
        _testing.conv2d_forward(x, np.zeros((4, 3, 3, 3), np.float32), 0, 1)
