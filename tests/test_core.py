"""The foundation: configuration, kernel choice, threads, threadpoolctl, the GEMM wrapper."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import convirt
from convirt import _core, _testing


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


AVX512 = {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= cpu_flags()
AVX2 = {"avx2", "fma"} <= cpu_flags()


def config_in_subprocess(
    env_changes, code="import convirt, json; print(json.dumps(convirt.config()))"
):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BLIS_ARCH_TYPE", "OMP_NUM_THREADS")
    }
    env.update(env_changes)
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out


def test_config_has_what_a_bug_report_needs():
    info = convirt.config()
    for key in (
        "blis_version",
        "blis_arch",
        "blis_arch_reason",
        "blis_configs",
        "num_threads",
        "num_cores",
        "openmp_runtime",
        "compiler",
        "cflags",
        "blis_library",
        "openmp_library",
        "convirt_version",
        "gemm_kernel",
        "vector_loops",
    ):
        assert key in info, key
    assert info["blis_openmp"] is True
    assert "-fopenmp" in info["cflags"] and "-Wall" in info["cflags"]
    assert "libgomp" in info["openmp_library"]
    assert "blis" in info["blis_library"]


def test_show_config_prints(capsys):
    convirt.show_config()
    printed = capsys.readouterr().out
    assert "blis_arch:" in printed and "num_threads:" in printed


@pytest.mark.skipif(not (AVX512 or AVX2), reason="needs an AVX2 or AVX-512 CPU")
def test_kernel_choice_without_user_setting():
    info = json.loads(config_in_subprocess({}).stdout)
    assert info["blis_arch_reason"].startswith("chosen by convirt")
    if AVX512:
        assert info["blis_arch"] == "skx"  # AVX-512 kernels on an AVX-512 CPU
    else:
        assert info["blis_arch"] in ("zen3", "zen2", "zen", "haswell")
    assert info["blis_arch"] != "generic"


def test_user_setting_is_respected():
    info = json.loads(config_in_subprocess({"BLIS_ARCH_TYPE": "generic"}).stdout)
    assert info["blis_arch"] == "generic"
    assert "set by the user" in info["blis_arch_reason"]
    numeric = json.loads(
        config_in_subprocess({"BLIS_ARCH_TYPE": str(info["blis_arch_id"])}).stdout
    )
    assert numeric["blis_arch"] == "generic"


@pytest.mark.skipif(AVX512, reason="needs a CPU without AVX-512")
def test_user_setting_the_cpu_cannot_run_is_ignored_not_a_crash():
    out = config_in_subprocess({"BLIS_ARCH_TYPE": "0"})  # skx
    info = json.loads(out.stdout)
    assert info["blis_arch"] != "skx"
    assert "needs instructions this CPU lacks" in info["blis_arch_reason"]
    assert "RuntimeWarning" in out.stderr


def test_invalid_user_setting_is_ignored_not_a_crash():
    out = config_in_subprocess({"BLIS_ARCH_TYPE": "99"})
    info = json.loads(out.stdout)
    assert "names no x86-64 sub-configuration" in info["blis_arch_reason"]
    assert "RuntimeWarning" in out.stderr


def test_threads_default_to_usable_cores_and_honour_omp_num_threads():
    info = json.loads(config_in_subprocess({}).stdout)
    assert info["num_threads"] == len(os.sched_getaffinity(0))
    info = json.loads(config_in_subprocess({"OMP_NUM_THREADS": "1"}).stdout)
    assert info["num_threads"] == 1


@pytest.mark.parametrize(
    "kernel_set,width", [("skx", "avx512"), ("haswell", "avx2"), ("zen3", "avx2")]
)
def test_own_gemm_kernel_goes_with_the_kernel_set(kernel_set, width):
    """convirt's GEMM kernel takes the width of the BLIS kernel set (so that running the
    tests on haswell or zen3 tests the AVX2 kernel on an AVX-512 CPU), and
    CONVIRT_SMALL_GEMM=0 leaves every GEMM to BLIS."""
    info = json.loads(config_in_subprocess({"BLIS_ARCH_TYPE": kernel_set}).stdout)
    if info["blis_arch"] != kernel_set:
        pytest.skip(f"this CPU does not run {kernel_set}")
    assert info["gemm_kernel"] == width
    env = {"BLIS_ARCH_TYPE": kernel_set, "CONVIRT_SMALL_GEMM": "0"}
    off = json.loads(config_in_subprocess(env).stdout)
    assert (off["blis_arch"], off["gemm_kernel"]) == (kernel_set, "none")


def test_set_num_threads():
    before = convirt.get_num_threads()
    try:
        convirt.set_num_threads(1)
        assert convirt.get_num_threads() == 1
        convirt.set_num_threads(before)
        assert convirt.get_num_threads() == before
    finally:
        convirt.set_num_threads(before)
    with pytest.raises(ValueError, match="number of threads must be"):
        convirt.set_num_threads(0)
    with pytest.raises(TypeError):
        convirt.set_num_threads("2")


@pytest.mark.parametrize("n", [-(2**70), 2**70, -(2**31) - 1, 2**31])
def test_set_num_threads_beyond_int_reports_the_number_given(n, threads):
    # set_num_threads(-2**70) said "got 2147483647": the value was clamped to an int
    # before the core's check. Now the message gives what was passed.
    before = convirt.get_num_threads()
    with pytest.raises(ValueError, match=rf"number of threads must be 1\.\.\d+, got {n}$"):
        convirt.set_num_threads(n)
    assert convirt.get_num_threads() == before
    convirt.set_num_threads(np.int64(1))  # NumPy integers are ints
    assert convirt.get_num_threads() == 1


def test_set_winograd_takes_only_its_documented_values():
    # set_winograd(np.int64(4)) and set_winograd("no") both switched F(2x2, 3x3) on
    # (anything but a Python int went through its truth value).
    before = convirt.get_winograd()
    try:
        for value, expected in [
            (np.int64(4), 4),
            (np.int32(2), True),
            (np.uint8(0), False),
            (np.True_, True),
            (np.False_, False),
            (4, 4),
            (1, True),
            (False, False),
            (True, True),
        ]:
            convirt.set_winograd(value)
            assert convirt.get_winograd() == expected, value
            assert type(convirt.get_winograd()) is type(expected), value
        for value, error in [
            ("no", TypeError),
            ("", TypeError),
            (None, TypeError),
            (4.0, TypeError),
            ([4], TypeError),
            (3, ValueError),
            (np.int64(8), ValueError),
            (-1, ValueError),
            (2**70, ValueError),
        ]:
            convirt.set_winograd(4)
            with pytest.raises(error, match="set_winograd takes True, False, 2 or 4"):
                convirt.set_winograd(value)
            assert convirt.get_winograd() == 4, value  # unchanged
    finally:
        convirt.set_winograd(before)


def test_threadpoolctl_sees_blis_and_openmp():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    info = threadpoolctl.threadpool_info()
    apis = {entry["internal_api"]: entry for entry in info}
    assert "blis" in apis and "openmp" in apis
    config = convirt.config()
    blis_paths = [e["filepath"] for e in info if e["internal_api"] == "blis"]
    assert any(
        os.path.realpath(p) == os.path.realpath(config["blis_library"]) for p in blis_paths
    )
    before = convirt.get_num_threads()
    with threadpoolctl.threadpool_limits(1):
        assert convirt.get_num_threads() == 1
    assert convirt.get_num_threads() == before  # restored, not left at 1
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert convirt.get_num_threads() == 1
    assert convirt.get_num_threads() == before


def test_threadpoolctl_and_synthetic_data_leave_the_thread_count_alone():
    # In a fresh process (BLIS's own setting not yet touched): synthetic_cxr holds
    # NumPy's BLAS to one thread while it draws, through threadpoolctl, whose restore
    # used to leave the core on one thread for good.
    code = (
        "import convirt, threadpoolctl\n"
        "from convirt.datasets import synthetic_cxr\n"
        "counts = [convirt.get_num_threads()]\n"
        "synthetic_cxr(4, size=16)\n"
        "counts.append(convirt.get_num_threads())\n"
        "with threadpoolctl.threadpool_limits(1, user_api='blas'):\n"
        "    pass\n"
        "counts.append(convirt.get_num_threads())\n"
        "print(counts)\n"
    )
    out = config_in_subprocess({}, code)
    assert out.stdout.strip() == str([len(os.sched_getaffinity(0))] * 3), out.stderr


# ---- GEMM wrapper ---------------------------------------------------------------------------


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("layout", ["nn", "tn", "nt", "strided"])
def test_gemm_matches_numpy(layout, reference):
    rng = np.random.default_rng(0)
    m, n, k = 37, 29, 41
    if layout == "nn":
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
    elif layout == "tn":
        a = rng.standard_normal((k, m)).astype(np.float32).T
        b = rng.standard_normal((k, n)).astype(np.float32)
    elif layout == "nt":
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((n, k)).astype(np.float32).T
    else:
        a = rng.standard_normal((2 * m, 3 * k)).astype(np.float32)[::2, ::3]
        b = rng.standard_normal((k, 2 * n)).astype(np.float32)[:, 1::2]
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    c = c0.copy()
    gemm = _testing.gemm_reference if reference else _core.gemm
    gemm(a, b, c, alpha=0.5, beta=2.0)
    expected = 0.5 * a.astype(np.float64) @ b.astype(np.float64) + 2.0 * c0
    np.testing.assert_allclose(c, expected, rtol=1e-4, atol=1e-4)


# Which operands are views with negative strides, on which axes: the ones where both
# strides of a dimension are negative (m: A and C rows; n: B and C columns; k: A
# columns and B rows) go to BLIS walked backwards, the others to the plain loop.
NEGATIVE = {
    "a_rows": {"a": (slice(None, None, -1), slice(None))},
    "a_and_c_rows": {
        "a": (slice(None, None, -1), slice(None)),
        "c": (slice(None, None, -1), slice(None)),
    },
    "b_and_c_columns": {
        "b": (slice(None), slice(None, None, -1)),
        "c": (slice(None), slice(None, None, -1)),
    },
    "k_both": {"a": (slice(None), slice(None, None, -1)), "b": (slice(None, None, -1),)},
    "everything": {"a": (slice(None, None, -1),) * 2, "b": (slice(None, None, -1),) * 2,
                   "c": (slice(None, None, -1),) * 2},
    "c_only": {"c": (slice(None, None, -2), slice(None))},
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_gemm_with_negative_strides_stays_inside_the_arrays(case):
    rng = np.random.default_rng(1)
    m, n, k = 37, 29, 41
    shapes = {"a": (m, k), "b": (k, n), "c": (m, n)}
    views, buffers = {}, {}
    for name, shape in shapes.items():
        index = NEGATIVE[case].get(name)
        # each operand sits in the middle of a buffer of sentinels
        full = (2 * shape[0], shape[1]) if case == "c_only" and name == "c" else shape
        buffer = np.full((full[0] + 8, full[1] + 8), -12345.5, np.float32)
        inner = buffer[4:-4, 4:-4]
        inner[...] = rng.standard_normal(full)
        views[name] = inner if index is None else inner[index]
        buffers[name] = buffer
    a, b, c = (views[x] for x in "abc")
    assert c.shape == (m, n) and (a.strides[0] < 0 or b.strides[1] < 0 or c.strides[0] < 0
                                  or c.strides[1] < 0 or a.strides[1] < 0)  # fmt: skip
    c0 = c.copy()
    expected = 0.5 * a.astype(np.float64) @ b.astype(np.float64) + 2.0 * c0
    _core.gemm(a, b, c, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(c, expected, rtol=1e-4, atol=1e-4)
    for name, buffer in buffers.items():  # nothing written outside the views
        ring = np.ones(buffer.shape, bool)
        ring[4:-4, 4:-4] = False
        assert (buffer[ring] == -12345.5).all(), name


# The unpacked small-GEMM kernel (cv_gemm_small) the layers' tiles use for 64-256 columns:
# full 6-row blocks and the rows left over, full 4-vector column blocks and partial ones
# (several full ones with a partial one after them: AVX2 runs rows outside, columns inside),
# k from 1 up, A row-major and column-major (the weight gradient reads it transposed),
# overwrite and accumulate; columns that are no multiple of 8 are refused (C untouched).
SMALL_GEMM_SHAPES = [(113, 64, 64), (7, 48, 5), (1, 16, 1), (6, 256, 300), (20, 8, 3),
                     (13, 24, 7), (12, 80, 33), (23, 32, 9), (47, 32, 130),
                     (29, 152, 11)]  # fmt: skip


@pytest.mark.parametrize("m,n,k", SMALL_GEMM_SHAPES)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("a_order", ["C", "F"])
def test_small_gemm_kernel_matches_numpy(m, n, k, accumulate, a_order):
    rng = np.random.default_rng(m * n + k)
    a = np.asarray(rng.standard_normal((m, k)), np.float32, order=a_order)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    c = c0.copy()
    if not _testing.gemm_small(a, b, c, accumulate=accumulate):
        # refused: only a width it cannot take, or no kernel with this kernel set
        assert (n % 8 or convirt.config()["gemm_kernel"] == "none") and np.array_equal(
            c, c0
        )
        return
    expected = a.astype(np.float64) @ b + (c0 if accumulate else 0)
    scale = np.abs(a).astype(np.float64) @ np.abs(b) + (np.abs(c0) if accumulate else 0)
    assert (np.abs(c - expected) <= 1e-6 * scale + 1e-30).all()


@pytest.mark.parametrize("m,n", [(13, 80), (23, 32)])
def test_small_gemm_kernel_rows_do_not_depend_on_the_blocking(m, n):
    """Each row of C is the same sum in the same order whether it falls in a full block
    of rows (6, or 12 for 32 columns) or among the rows left over (blocks of 8, 4, 2, 1):
    the layers split rows among threads freely."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((m, 70)).astype(np.float32)
    b = rng.standard_normal((70, n)).astype(np.float32)
    whole = np.zeros((m, n), np.float32)
    if not _testing.gemm_small(a, b, whole):
        pytest.skip("no AVX2 + FMA: the kernel does not run here")
    for i in range(m):
        row = np.zeros((1, n), np.float32)
        assert _testing.gemm_small(a[i : i + 1], b, row)
        assert np.array_equal(row[0], whole[i]), i


def test_small_gemm_kernel_refuses_widths_off_the_vector():
    a, b = np.ones((4, 3), np.float32), np.ones((3, 12), np.float32)
    c = np.full((4, 12), 7.0, np.float32)
    assert not _testing.gemm_small(a, b, c)
    assert (c == 7.0).all()


# The same kernel on packed panels of B (cv_gemm_packed; cv_pack_b + cv_gemm_prepacked
# over row tiles), for the GEMMs past the small kernel's size: B row-major and
# transposed (packed through the 8 x 8 transposes), A both ways (column-major A is
# copied a block at a time), k over several slabs (of at most 384) and not a multiple, partial
# panels (n = 80: 64 + 16), rows in and out of the 72-row blocks, a team split by
# columns (n = 1024; with a column-major A copied once for both, 63 x 512) and by rows
# (m > n); with AVX-512's 64-column panels and 2 threads, 300 x 1024 x 300 and 130 x 768
# x 768 sweep each thread's panels in two column chunks (512 KiB of packed B at most).
PACKED_GEMM_SHAPES = [(300, 1024, 300), (97, 80, 257), (1, 64, 1), (1000, 16, 129),
                      (130, 768, 768), (75, 80, 1000), (145, 48, 513), (63, 512, 700),
                      (75, 32, 700)]  # fmt: skip


@pytest.mark.parametrize("m,n,k", PACKED_GEMM_SHAPES)
@pytest.mark.parametrize("b_order", ["C", "F"])
@pytest.mark.parametrize("accumulate,tile", [(False, 0), (True, 0), (True, 37)])
def test_packed_gemm_matches_numpy(m, n, k, b_order, accumulate, tile):
    rng = np.random.default_rng(m + n * k)
    a = np.asarray(rng.standard_normal((m, k)), np.float32, order="F" if m % 2 else "C")
    b = np.asarray(rng.standard_normal((k, n)), np.float32, order=b_order)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    c = c0.copy()
    if not _testing.gemm_packed(a, b, c, accumulate=accumulate, tile=tile):
        # refused: only a width it cannot take or no kernel with this kernel set
        assert n % 8 or convirt.config()["gemm_kernel"] == "none"
        assert np.array_equal(c, c0)
        return
    expected = a.astype(np.float64) @ b + (c0 if accumulate else 0)
    scale = np.abs(a).astype(np.float64) @ np.abs(b) + (np.abs(c0) if accumulate else 0)
    assert (np.abs(c - expected) <= 1e-6 * scale + 1e-30).all()


def test_packed_gemm_is_the_same_sum_on_any_split():
    """Threads split C by columns or by rows, row tiles share one packed B, and a
    column-major A is copied in blocks: every element is the same slab sums added in the
    same order, so all give the same bits; with one slab (k <= 384), the small kernel's
    on B in place."""
    rng = np.random.default_rng(9)
    a = rng.standard_normal((250, 600)).astype(np.float32)
    b = rng.standard_normal((600, 256)).astype(np.float32)
    in_place = np.zeros((250, 256), np.float32)
    if not _testing.gemm_small(a[:, :100], b[:100], in_place):
        pytest.skip("no AVX2 + FMA: the kernel does not run here")
    before = convirt.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            convirt.set_num_threads(threads)
            for tile in (0, 1, 50):
                for a_order in ("C", "F"):
                    c = np.zeros((250, 256), np.float32)
                    assert _testing.gemm_packed(
                        np.asarray(a, order=a_order), b, c, tile=tile
                    )
                    results.append(c)
                one_slab = np.zeros((250, 256), np.float32)
                assert _testing.gemm_packed(a[:, :100], b[:100], one_slab, tile=tile)
                assert np.array_equal(one_slab, in_place), (threads, tile)
            for a_order in ("C", "F"):  # m > n: split by rows
                c = np.zeros((257, 256), np.float32)
                a_tall = np.asarray(np.vstack([a, a[:7]]), order=a_order)
                assert _testing.gemm_packed(a_tall, b, c)
                results.append(c[:250])
        for c in results[1:]:
            assert np.array_equal(c, results[0])
    finally:
        convirt.set_num_threads(before)


def test_packed_gemm_column_chunks_keep_the_sums():
    """With AVX-512's 64-column panels a thread sweeps its panels in column chunks (at
    most 512 KiB of packed B): 1024 columns in slabs of 200 rows of k are two chunks on
    one thread and one per thread on two. Each element is the same kernel call per slab
    either way, so the bits agree, and with the float64 product."""
    rng = np.random.default_rng(12)
    a = rng.standard_normal((150, 400)).astype(np.float32)
    b = rng.standard_normal((400, 1024)).astype(np.float32)
    before = convirt.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            convirt.set_num_threads(threads)
            c = np.zeros((150, 1024), np.float32)
            if not _testing.gemm_packed(a, b, c):
                pytest.skip("no AVX2 + FMA: the kernel does not run here")
            results.append(c)
    finally:
        convirt.set_num_threads(before)
    assert np.array_equal(results[0], results[1])
    expected = a.astype(np.float64) @ b
    scale = np.abs(a).astype(np.float64) @ np.abs(b)
    assert (np.abs(results[0] - expected) <= 1e-6 * scale).all()


# A few rows against a large weight (cv_gemm_few_rows: one small image's pixels, one
# short sequence's tokens), computed the other way round, C^T = B^T A^T, with B^T read in
# place and A^T packed with zero columns up to a multiple of 16: rows that fill no
# panel (1, 49), a partial panel past full ones (100 = 64 + 36), AVX-512's 32-column
# kernel (m = 20 -> 32), k over several slabs and not a multiple of 8 (1031), A
# row-major and column-major, C added to or not.
FEW_ROWS_SHAPES = [(1, 512, 200), (49, 2048, 512), (100, 512, 1031), (20, 768, 768),
                   (7, 1000, 384)]  # fmt: skip


@pytest.mark.parametrize("m,n,k", FEW_ROWS_SHAPES)
@pytest.mark.parametrize("a_order", ["C", "F"])
@pytest.mark.parametrize("accumulate", [False, True])
def test_few_rows_gemm_is_the_packed_sum(m, n, k, a_order, accumulate):
    """The same bits as the packed panels of B (the path it replaces for these shapes:
    each element the same slab sums, each product the same), on 1 and 2 threads, and
    within float32 rounding of the float64 product."""
    rng = np.random.default_rng(m * n + k)
    a = np.asarray(rng.standard_normal((m, k)), np.float32, order=a_order)
    weight = rng.standard_normal((n, k)).astype(np.float32)  # B = weight^T: rsb == 1
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    packed = c0.copy()
    if not _testing.gemm_packed(a, weight.T, packed, accumulate=accumulate):
        pytest.skip("no AVX2 + FMA: the kernel does not run here")
    before = convirt.get_num_threads()
    try:
        for threads in (1, 2):
            convirt.set_num_threads(threads)
            c = c0.copy()
            assert _testing.gemm_packed(
                a, weight.T, c, accumulate=accumulate, few_rows=True
            )
            assert np.array_equal(c, packed), threads
    finally:
        convirt.set_num_threads(before)
    expected = a.astype(np.float64) @ weight.T + (c0 if accumulate else 0)
    scale = np.abs(a).astype(np.float64) @ np.abs(weight.T) + (
        np.abs(c0) if accumulate else 0
    )
    assert (np.abs(packed - expected) <= 1e-6 * scale).all()


def test_few_rows_gemm_declines_what_the_packed_path_would_not_pack():
    """B with contiguous rows (rsb != 1), a weight small enough for the tiles' kernel
    to read in place (other sums), and a width off the vector: refused, C untouched."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((5, 300)).astype(np.float32)
    for b in (
        rng.standard_normal((300, 512)).astype(np.float32),  # row-major B
        rng.standard_normal((64, 64)).astype(np.float32).T[:, :64],  # small weight
        rng.standard_normal((100, 300)).astype(np.float32).T,  # n = 100: no kernel
    ):
        aa = a[:, : b.shape[0]]
        c = np.full((5, b.shape[1]), 7.0, np.float32)
        assert not _testing.gemm_packed(aa, b, c, few_rows=True)
        assert (c == 7.0).all()


@pytest.mark.parametrize("k", [385, 448, 512])
def test_deep_slab_for_row_major_a_is_one_pass(k):
    """The loss's GEMMs with a row-major A pack k <= 512 in one slab of B
    (cv_tiles_b_init_rows): every element is then the small kernel's single sum over
    k, whatever the tiles and threads, where the default packing (slabs of at most
    384) adds two slab sums and rounds otherwise."""
    rng = np.random.default_rng(k)
    a = rng.standard_normal((150, k)).astype(np.float32)
    b = rng.standard_normal((k, 128)).astype(np.float32)
    single = np.zeros((150, 128), np.float32)
    if not _testing.gemm_small(a, b, single):
        pytest.skip("no AVX2 + FMA: the kernel does not run here")
    b_t = np.asarray(b, order="F")  # B with unit column stride: always packed
    before = convirt.get_num_threads()
    try:
        for threads in (1, 2):
            convirt.set_num_threads(threads)
            for tile in (0, 16, 77):
                c = np.zeros((150, 128), np.float32)
                assert _testing.gemm_packed(a, b_t, c, tile=tile, rows=True)
                assert np.array_equal(c, single), (threads, tile)
    finally:
        convirt.set_num_threads(before)
    two_slabs = np.zeros((150, 128), np.float32)
    assert _testing.gemm_packed(a, b_t, two_slabs, tile=16)
    assert not np.array_equal(two_slabs, single)
    assert (
        np.abs(two_slabs - single).max() <= 1e-5 * np.abs(a).max() * np.abs(b).sum(0).max()
    )


def test_small_and_packed_gemm_accumulate_a_whole_product():
    """C += A B adds the product's sum to C (BLIS's order): twice is C + 2 A B to the
    bit when C starts at zero, which gradient accumulation relies on."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((30, 90)).astype(np.float32)
    b = rng.standard_normal((90, 64)).astype(np.float32)
    for gemm in (_testing.gemm_small, _testing.gemm_packed):
        once, twice = np.zeros((30, 64), np.float32), np.zeros((30, 64), np.float32)
        if not gemm(a, b, once):
            pytest.skip("no AVX2 + FMA: the kernel does not run here")
        assert gemm(a, b, twice, accumulate=True) and gemm(a, b, twice, accumulate=True)
        assert np.array_equal(twice, 2 * once)


# The blocked transpose (cv_transpose) behind the ResNet's transposed weights and the
# transposed weight gradient's sum: 8 x 8 register blocks in 64 x 64 panels, and the
# rows and columns left over at every edge; rows of both matrices with padding.
@pytest.mark.parametrize("rows,cols", [(1, 1), (8, 8), (7, 9), (64, 64), (65, 130),
                                       (2048, 512), (27, 2051), (300, 3)])  # fmt: skip
@pytest.mark.parametrize("accumulate", [False, True])
def test_transpose_matches_numpy(rows, cols, accumulate):
    rng = np.random.default_rng(rows * 7 + cols)
    src = rng.standard_normal((rows, cols + 3)).astype(np.float32)[:, :cols]
    dst0 = rng.standard_normal((cols, rows + 5)).astype(np.float32)
    dst = dst0.copy()
    _testing.transpose(src, dst[:, :rows], accumulate=accumulate)
    expected = src.T + (dst0[:, :rows] if accumulate else 0)
    assert np.array_equal(dst[:, :rows], expected)
    assert np.array_equal(dst[:, rows:], dst0[:, rows:])  # the padding untouched


def test_gemm_strided_output_and_beta_zero_ignores_nan():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((8, 5)).astype(np.float32)
    b = rng.standard_normal((5, 6)).astype(np.float32)
    base = np.full((6, 8), np.nan, np.float32)
    c = base.T
    _core.gemm(a, b, c)
    np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)


def test_gemm_bad_input():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"B must have shape \(4, \*\)"):
        _core.gemm(a, np.zeros((5, 2), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="C overlaps A"):
        _core.gemm(a, np.zeros((4, 4), np.float32), a[:, :4])


def test_fma_peak_is_measured():
    gflops, bits = _core.fma_peak(threads=1, seconds=0.05)
    assert bits in (32, 256, 512)
    assert gflops > 1.0


def test_gemm_kernel_peak_runs_the_kernel_in_use():
    # convirt's own kernel on operands in L1, at the width fma_peak measures by default;
    # refused where the kernel set has no kernel of the core's own (BLIS runs the GEMMs)
    if convirt.config()["gemm_kernel"] == "none":
        with pytest.raises(ValueError, match="no GEMM kernel of convirt's own"):
            _core.gemm_kernel_peak(threads=1, seconds=0.02)
        return
    gflops, bits = _core.gemm_kernel_peak(threads=1, seconds=0.02)
    assert bits == _core.fma_peak(threads=1, seconds=0.02)[1]
    assert np.isfinite(gflops) and gflops > 0.0
    assert (
        _core.gemm_kernel_peak(threads=2 if os.cpu_count() > 1 else 1, seconds=0.02)[0] > 0
    )
    with pytest.raises(ValueError, match=r"seconds must be in \(0, 600\)"):
        _core.gemm_kernel_peak(seconds=-1.0)


def cpu_vector_bits():
    """The widest FMA vectors this CPU runs, from /proc/cpuinfo (independent of the core)."""
    return 512 if "avx512f" in cpu_flags() else 256 if AVX2 else 32


def test_fma_peak_runs_at_the_width_of_the_kernels_in_use():
    # 512 bits with skx, 256 with haswell or the zen sets (the kernel-set runs of the
    # suite set BLIS_ARCH_TYPE for this process), the widest the CPU runs with generic
    arch = convirt.config()["blis_arch"]
    expected = {
        "skx": 512,
        "knl": 512,
        "haswell": 256,
        "zen": 256,
        "zen2": 256,
        "zen3": 256,
    }
    _, bits = _core.fma_peak(threads=1, seconds=0.02)
    assert bits == expected.get(arch, cpu_vector_bits())


def test_fma_peak_takes_any_width_the_cpu_runs_and_refuses_others():
    widest = cpu_vector_bits()
    for bits in (512, 256, 32):
        if bits <= widest:
            gflops, ran = _core.fma_peak(threads=1, seconds=0.02, bits=bits)
            assert ran == bits and gflops > 0.0
        else:
            with pytest.raises(ValueError, match=f"does not run {bits}-bit"):
                _core.fma_peak(threads=1, seconds=0.02, bits=bits)
    for bad in (128, -1, 1024):
        with pytest.raises(ValueError, match="bits must be 512, 256, 32 or 0"):
            _core.fma_peak(threads=1, seconds=0.02, bits=bad)
    with pytest.raises(TypeError):
        _core.fma_peak(threads=1, seconds=0.02, bits="512")
