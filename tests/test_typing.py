"""Type information for editors and type checkers: inspect.signature works on every
public C-backed class, method and function (text signatures in the C docstrings) and
names the keywords the C code parses; the package ships py.typed and a stub of the C
extension; the public Python API is annotated."""

import ast
import inspect
import os

import numpy as np
import pytest

import convirt
from convirt import _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

C_TYPES = ["Adam", "ContrastiveLoss", "Encoder", "ImageAugment", "LinearHead"]
C_FUNCTIONS = [
    "binary_cross_entropy",
    "config",
    "fma_peak",
    "gemm",
    "gemm_kernel_peak",
    "get_num_threads",
    "random_uniform",
    "set_num_threads",
    "softmax_cross_entropy",
]


def public_c_callables():
    for name in C_FUNCTIONS:
        yield name, getattr(_core, name)
    for type_name in C_TYPES:
        cls = getattr(_core, type_name)
        yield type_name, cls
        for name, member in vars(cls).items():
            if not name.startswith("_") and callable(member):
                yield f"{type_name}.{name}", member


@pytest.mark.parametrize(("name", "obj"), list(public_c_callables()))
def test_inspect_signature_works_on_the_c_api(name, obj):
    signature = inspect.signature(obj)
    assert "args" not in signature.parameters, name
    # The docstring keeps its text after the signature.
    assert obj.__doc__ and not obj.__doc__.startswith(name.split(".")[-1] + "("), name


def test_the_signatures_name_the_keywords_the_c_code_parses(tiny_bert):
    loss = convirt.ContrastiveLoss()
    v = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    for name in ("grad", "compute_grad"):
        assert name in inspect.signature(loss.nt_xent).parameters
    loss.nt_xent(z=v, grad=None, compute_grad=False)  # each keyword is accepted
    sig = inspect.signature(convirt.ContrastiveLoss)
    kwargs = {p.name: p.default for p in sig.parameters.values()}
    assert repr(convirt.ContrastiveLoss(**kwargs)) == repr(loss)  # the defaults are right
    bound = inspect.signature(tiny_bert.forward)
    assert list(bound.parameters)[:3] == ["x", "attention_mask", "token_type_ids"]
    assert inspect.signature(convirt.Adam).parameters["lr"].default == 1e-4
    assert inspect.signature(convirt.set_num_threads).parameters["n"].kind == (
        inspect.Parameter.POSITIONAL_ONLY
    )
    head = _core.LinearHead(in_dim=3, out_dim=2, seed=1)
    x = np.ones((2, 3), np.float32)
    head.backward(d_logits=head.forward(x=x, out=None), x=x, d_x=None, input_grad=False)


def test_the_python_classes_have_signatures_too():
    assert "proj_dim" in inspect.signature(convirt.Encoder.resnet18).parameters
    assert inspect.signature(convirt.ImageAugment).parameters["size"].default == 224
    assert "image_size" in inspect.signature(convirt.Encoder.encode).parameters


def test_the_package_is_marked_typed_and_ships_its_stub():
    package = os.path.join(ROOT, "convirt")
    assert os.path.isfile(os.path.join(package, "py.typed"))
    assert os.path.isfile(os.path.join(package, "_core.pyi"))
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        pyproject = f.read()
    assert '"py.typed"' in pyproject and '"_core.pyi"' in pyproject


def test_the_stub_names_every_public_c_object():
    with open(os.path.join(ROOT, "convirt", "_core.pyi"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = {
        node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }
    public = {n for n in dir(_core) if not n.startswith("_")}
    assert public - names == set()
    for node in tree.body:  # the stub's methods match the C type's
        if isinstance(node, ast.ClassDef) and node.name in C_TYPES:
            stubbed = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            members = {
                n
                for n, m in vars(getattr(_core, node.name)).items()
                if not n.startswith("_") and callable(m)
            }
            assert members <= stubbed, node.name


# The modules whose public functions and methods must be fully annotated.
ANNOTATED = [
    "convirt/encoder.py",
    "convirt/export.py",
    "convirt/embeddings.py",
    "convirt/augment.py",
    "convirt/schedules.py",
    "convirt/text.py",
]


def unannotated(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    missing = []

    def check(node, owner=""):
        if node.name.startswith("_") and node.name != "__init__":
            return
        args = node.args
        params = args.posonlyargs + args.args + args.kwonlyargs
        params += [a for a in (args.vararg, args.kwarg) if a is not None]
        for arg in params:
            if arg.arg not in ("self", "cls") and arg.annotation is None:
                missing.append(f"{owner}{node.name}({arg.arg})")
        if node.returns is None and node.name != "__init__":
            missing.append(f"{owner}{node.name} -> ?")

    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            check(node)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    check(item, node.name + ".")
    return missing


@pytest.mark.parametrize("path", ANNOTATED)
def test_the_public_api_is_annotated(path):
    assert unannotated(path) == []


@pytest.mark.slow  # about a minute: mypy reads numpy's stubs
def test_mypy_accepts_the_annotated_modules_and_the_stub():
    api = pytest.importorskip("mypy.api")
    paths = [os.path.join(ROOT, p) for p in [*ANNOTATED, "convirt/_core.pyi"]]
    out, err, status = api.run(
        ["--ignore-missing-imports", "--follow-imports=silent", "--no-incremental", *paths]
    )
    assert status == 0, out + err
