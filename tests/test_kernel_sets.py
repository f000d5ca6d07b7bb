"""The numerical tests once per BLIS kernel set this CPU can run.

BLIS picks a different kernel set on each CPU (zen3 on AMD Zen 3, skx on AVX-512
machines, haswell on older Intel, generic where it knows nothing better), and each sums
in its own order, so a tolerance that holds for one may not hold for another. Every set
is a supported configuration: the numerical tests (GEMM, layers, towers, loss, the
optimiser, fine-tuning, trainer parity with PyTorch, and the quick demo's learning) run
again, in a subprocess, on
each set this CPU executes other than the one this run already uses. A set the CPU
cannot run is skipped with the reason convirt gives."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import convirt

KERNEL_SETS = ["generic", "haswell", "zen3", "skx"]

# the layers, towers, loss and optimiser, each checked against a reference
LAYERS = [
    "test_core.py",
    "test_image_layers.py",
    "test_text_layers.py",
    "test_loss.py",
    "test_resnet.py",
    "test_bert.py",
    "test_classify.py",
    "test_optim.py",
]
NUMERICAL = LAYERS + [
    "test_finetune.py",
    "test_trainer.py::test_ten_steps_match_a_pytorch_training_loop",
    # the quick demo's learning (one run of the preset, about 2 minutes): its bounds
    # were once set from one kernel set and failed on the others
    "test_demo.py::test_pretraining_beats_random_init_at_10_percent_labels",
    "test_demo.py::test_text_to_image_precision_is_well_above_chance",
    "test_demo.py::test_enough_categories_are_retrieved_by_radiologists_words",
]

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(command, env, cwd=None, timeout=3600):
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def config_in_subprocess(env, cwd=None):
    """convirt.config() as a fresh interpreter with env sees it."""
    code = "import convirt, json; print(json.dumps(convirt.config()))"
    out = run([sys.executable, "-W", "ignore", "-c", code], env, cwd, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# the subprocesses import the convirt this run imported, installed or not
IMPORTED_FROM = os.path.dirname(os.path.dirname(os.path.abspath(convirt.__file__)))
SAME_CONVIRT = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(filter(None, [IMPORTED_FROM, os.environ.get("PYTHONPATH")])),
)


def kernel_set_in_subprocess(name):
    return config_in_subprocess(dict(SAME_CONVIRT, BLIS_ARCH_TYPE=name))


def run_pytest(args, cwd, env):
    """pytest with args in a subprocess, BLIS_ARCH_TYPE left to --kernel-set."""
    env = {k: v for k, v in env.items() if k != "BLIS_ARCH_TYPE"}
    return run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], env, cwd)


@pytest.mark.slow
@pytest.mark.parametrize("name", KERNEL_SETS)
def test_numerical_tests_pass_on_kernel_set(name):
    if convirt.config()["blis_arch"] == name:
        pytest.skip(f"{name} is the kernel set this run uses: every test ran on it")
    info = kernel_set_in_subprocess(name)
    if info["blis_arch"] != name:
        pytest.skip(f"cannot run {name} here: {info['blis_arch_reason']}")
    out = run_pytest(["-q", "--kernel-set", name, *NUMERICAL], cwd=HERE, env=SAME_CONVIRT)
    tail = "\n".join(out.stdout.splitlines()[-40:])
    assert out.returncode == 0, f"on kernel set {name}:\n{tail}\n{out.stderr[-2000:]}"
    print(f"kernel set {name}: {out.stdout.splitlines()[-1]}")


# The element-wise loops (csrc/core.h's CV_VECTORIZE) are compiled for AVX-512, for
# AVX2 + FMA and for the x86-64 baseline, and the loader picks the widest the CPU runs:
# on an AVX-512 CPU the other two never run, whatever the kernel set. A build with
# CV_VECTOR_LEVEL=3 (or 1) has that level alone; the layers' numerical tests run on it,
# with the kernel set an older CPU gets, so that an AVX-512 machine tests what an AVX2
# machine runs. The build goes to build/vector-level-N (the in-place one is untouched).
VECTOR_LEVELS = {3: ("x86-64-v3", "zen3"), 1: ("x86-64 (baseline)", "generic")}
VECTOR_TESTS = LAYERS + ["test_augment.py"]


def build_with_vector_level(level):
    """Build the core and extensions with CV_VECTOR_LEVEL=level into build/; return
    the directory to put on PYTHONPATH (it holds a copy of the package)."""
    where = os.path.join(ROOT, "build", f"vector-level-{level}")
    lib = os.path.join(where, "lib")
    env = dict(os.environ, CONVIRT_CFLAGS=f"-DCV_VECTOR_LEVEL={level}")
    temp = os.path.join(where, "temp")
    build = ["setup.py", "-q", "build_ext", "--build-lib", lib, "--build-temp", temp]
    out = run([sys.executable, *build], env, ROOT)
    assert out.returncode == 0, f"build with CV_VECTOR_LEVEL={level}:\n{out.stderr[-3000:]}"
    shutil.copytree(
        os.path.join(ROOT, "convirt"),
        os.path.join(lib, "convirt"),
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
        dirs_exist_ok=True,
    )
    return lib


@pytest.mark.slow
@pytest.mark.parametrize("level", sorted(VECTOR_LEVELS, reverse=True))
def test_numerical_tests_pass_with_the_element_wise_loops_of_an_older_cpu(level):
    name, kernel_set = VECTOR_LEVELS[level]
    running = convirt.config()["vector_loops"]
    levels = {"x86-64-v4": 4, "x86-64-v3": 3, "x86-64 (baseline)": 1}
    runs = max((n for prefix, n in levels.items() if running.startswith(prefix)), default=0)
    if runs == level:
        pytest.skip(f"the {name} loops are the ones this run uses: every test ran on them")
    if runs < level:
        pytest.skip(f"this CPU (or compiler) cannot run the {name} loops: {running}")
    if not os.path.exists(os.path.join(ROOT, "setup.py")):
        pytest.skip("needs the source tree (setup.py) to build")
    lib = build_with_vector_level(level)
    # from the build directory, so that the source tree's convirt/ is not on the path
    env = dict(os.environ, PYTHONPATH=lib)
    info = config_in_subprocess(dict(env, BLIS_ARCH_TYPE=kernel_set), cwd=lib)
    assert info["vector_loops"].startswith(name), info["vector_loops"]
    assert info["blis_arch"] == kernel_set, info["blis_arch_reason"]
    # not -q: the report header names the element-wise loops the tests ran on
    tests = [os.path.join(HERE, test) for test in VECTOR_TESTS]
    out = run_pytest(["--kernel-set", kernel_set, *tests], cwd=lib, env=env)
    tail = "\n".join(out.stdout.splitlines()[-40:])
    assert out.returncode == 0, f"{name} loops, kernel set {kernel_set}:\n{tail}"
    assert f"element-wise loops {name}" in out.stdout, out.stdout[:2000]
    print(f"{name} loops, kernel set {kernel_set}: {out.stdout.splitlines()[-1]}")


# The softmaxes of attention and of the loss run one way on 64-byte vectors where the
# AVX-512 loops run and another on float arrays elsewhere (csrc/attention.c, loss.c);
# both promise the same operations in the same order. With FMA on both sides (the
# baseline build has none, so its products round apart) the bits must agree.
SAME_BITS = """
import ctypes, hashlib, os, numpy as np, convirt, convirt._testing as tl
core = ctypes.CDLL(os.path.join(os.path.dirname(convirt.__file__), "libconvirt.so"))
wide = ctypes.c_int.in_dll(core, "cv_wide_lanes").value
rng = np.random.default_rng(7)
lengths = [128, 77, 33, 16, 5]
qkv = (rng.standard_normal((sum(lengths), 3 * 384)) * 3).astype(np.float32)
digest = hashlib.sha256(tl.attention_forward(qkv, lengths, 12)[1].tobytes())
for n in (7, 100, 1024):
    u, v = (rng.standard_normal((2, n, 77)) * 2).astype(np.float32)
    out = convirt.ContrastiveLoss()(u, v)
    digest.update(np.array([out[0]]).tobytes() + out[5].tobytes() + out[6].tobytes())
print(convirt.config()["vector_loops"][:9], wide, digest.hexdigest())
"""


@pytest.mark.slow
def test_the_avx2_loops_give_the_bits_of_the_avx512_ones():
    if not convirt.config()["vector_loops"].startswith("x86-64-v4"):
        pytest.skip("needs a CPU that runs the AVX-512 loops, to compare the two")
    if not os.path.exists(os.path.join(ROOT, "setup.py")):
        pytest.skip("needs the source tree (setup.py) to build")
    lib = build_with_vector_level(3)
    digests = []
    for env, cwd in ((SAME_CONVIRT, HERE), (dict(os.environ, PYTHONPATH=lib), lib)):
        # the same GEMMs on both sides: the zen3 kernel set and the AVX2 GEMM kernel
        out = run([sys.executable, "-c", SAME_BITS], dict(env, BLIS_ARCH_TYPE="zen3"), cwd)
        assert out.returncode == 0, out.stderr[-3000:]
        digests.append(out.stdout.split())
    # the AVX-512 side takes the 64-byte-vector path, the AVX2 side the float arrays
    assert [d[:2] for d in digests] == [["x86-64-v4", "1"], ["x86-64-v3", "0"]], digests
    assert digests[0][2] == digests[1][2], digests
