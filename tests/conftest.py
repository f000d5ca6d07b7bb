"""Shared test set-up: the BLIS kernel set the run uses, and its report.

`pytest --kernel-set NAME` runs the tests on one BLIS sub-configuration (`generic`,
`haswell`, `zen3`, `skx`, ...): it sets BLIS_ARCH_TYPE before convirt is imported, and
stops with a usage error when this CPU or this BLIS build cannot run NAME (convirt would
fall back to another set, and the run would test something else than it says).
tests/test_kernel_sets.py uses it to run the numerical tests once per kernel set."""

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--kernel-set", default=None, metavar="NAME",
                     help="run on this BLIS kernel set (sets BLIS_ARCH_TYPE), e.g. generic, "
                          "haswell, zen3, skx")


def pytest_configure(config):
    kernel_set = config.getoption("--kernel-set")
    if kernel_set:
        os.environ["BLIS_ARCH_TYPE"] = kernel_set
        import convirt

        info = convirt.config()
        if info["blis_arch"] != kernel_set:
            raise pytest.UsageError(f"--kernel-set {kernel_set}: {info['blis_arch_reason']}")


def pytest_report_header(config):
    import convirt

    info = convirt.config()
    return (f"convirt: BLIS kernel set {info['blis_arch']} ({info['blis_arch_reason']}); "
            f"{info['num_threads']} threads; CPU {info['cpu_features']}")
