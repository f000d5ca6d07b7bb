"""Adam / AdamW against torch.optim, zero copy, state round trips, bad input; the
learning-rate schedules against torch.optim.lr_scheduler and their closed forms."""

import gc
import itertools
import json
import math
import sys
import warnings

import numpy as np
import pytest

import convirt
from convirt import Adam, NonFiniteError, ReduceLROnPlateau, WarmupCosine

torch = pytest.importorskip("torch")

SIZES = [1000, 37, 70000]  # the last spans three of the core's 32768-float chunks


def make_buffers(seed=0, sizes=SIZES):
    """Parameters as slices of one flat buffer (as an Encoder's), gradients likewise."""
    rng = np.random.default_rng(seed)
    flat = rng.standard_normal(sum(sizes)).astype(np.float32)
    grad_flat = np.zeros_like(flat)
    bounds = np.cumsum([0] + sizes)
    params = [flat[a:b] for a, b in itertools.pairwise(bounds)]
    grads = [grad_flat[a:b] for a, b in itertools.pairwise(bounds)]
    return flat, grad_flat, params, grads


def run_both(
    steps,
    *,
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    decoupled=False,
    max_grad_norm=None,
    grad_scale=1.0,
):
    """The same gradients into convirt.Adam and torch.optim.Adam(W); returns both
    parameter sets, both optimizers' moments and both norms per step."""
    flat, grad_flat, params, grads = make_buffers()
    t_params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    ours = Adam(
        params,
        grads,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled,
        max_grad_norm=max_grad_norm,
    )
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    theirs = kind(t_params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    rng = np.random.default_rng(1)
    norms = []
    for _ in range(steps):
        grad_flat[:] = rng.standard_normal(grad_flat.size).astype(np.float32) * grad_scale
        for tp, g in zip(t_params, grads):
            tp.grad = torch.from_numpy(g.copy())
        their_norm = None
        if max_grad_norm is not None:
            their_norm = torch.nn.utils.clip_grad_norm_(t_params, max_grad_norm).item()
        norms.append((ours.step(), their_norm))
        theirs.step()
    t_state = [theirs.state[tp] for tp in t_params]
    return {
        "ours": np.concatenate([p.copy() for p in params]),
        "theirs": np.concatenate([tp.detach().numpy() for tp in t_params]),
        "m": (ours.exp_avg.copy(), np.concatenate([s["exp_avg"].numpy() for s in t_state])),
        "v": (
            ours.exp_avg_sq.copy(),
            np.concatenate([s["exp_avg_sq"].numpy() for s in t_state]),
        ),
        "norms": norms,
        "flat": flat,
        "adam": ours,
    }


@pytest.mark.parametrize(
    "weight_decay,decoupled,max_grad_norm",
    [
        (0.0, False, None),
        (1e-2, False, None),  # L2 (torch.optim.Adam's weight_decay)
        (1e-2, True, None),  # AdamW
        (1e-2, False, 5.0),  # clipping: the gradients' norm is about 266
        (1e-2, True, 5.0),
        (0.0, False, 1e4),  # a norm below the limit: clip factor 1
    ],
)
def test_parity_with_torch_over_20_steps(weight_decay, decoupled, max_grad_norm):
    # Both run the same float32 operations in the same order with the same fused
    # multiply-adds; only torch's sqrt differs (by an ulp, in a fifth of the elements),
    # so the parameters agree to an ulp or two after 20 steps: rtol 1e-6 on values of
    # order 1, atol 1e-7 for the rare ones near 0. The moments are sums of terms of
    # order 0.1 that may cancel: atol 1e-7 there.
    r = run_both(
        20, weight_decay=weight_decay, decoupled=decoupled, max_grad_norm=max_grad_norm
    )
    np.testing.assert_allclose(r["ours"], r["theirs"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(*r["m"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(*r["v"], rtol=1e-5, atol=1e-10)
    assert not np.allclose(r["ours"], make_buffers()[0])  # it moved
    for ours, theirs in r["norms"]:
        if max_grad_norm is None:
            assert ours is None
        else:
            assert ours == pytest.approx(theirs, rel=1e-6)


def test_paper_defaults_match_torch():
    r = run_both(20, lr=1e-4, weight_decay=1e-6)
    np.testing.assert_allclose(r["ours"], r["theirs"], rtol=1e-6, atol=1e-7)
    adam = Adam(*make_buffers()[2:])
    assert (adam.lr, adam.betas, adam.eps, adam.weight_decay) == (
        1e-4,
        (0.9, 0.999),
        1e-8,
        1e-6,
    )
    assert adam.decoupled_weight_decay is False and adam.max_grad_norm is None
    assert "lr=0.0001" in repr(adam) and "71037 parameters in 3 arrays" in repr(adam)


def test_parameters_are_updated_in_place_and_state_is_a_view():
    flat, grad_flat, params, grads = make_buffers()
    adam = Adam(params, grads, lr=1e-2, weight_decay=0.0)
    assert all(a is b for a, b in zip(adam.parameters, params))
    assert all(a is b for a, b in zip(adam.gradients, grads))
    before = flat.copy()
    grad_flat[:] = 1.0
    adam.step()
    assert (flat < before).all()  # every element of the flat buffer moved
    assert adam.step_count == 1
    m = adam.exp_avg
    assert m.base is adam and m.dtype == np.float32 and m.shape == (adam.size,)
    assert np.shares_memory(m, adam.exp_avg)
    np.testing.assert_allclose(m, 0.1)
    m[:] = 0.0  # writes go to the optimizer's state
    np.testing.assert_array_equal(adam.state_dict()["exp_avg"], 0.0)
    # a view keeps the optimizer's memory alive
    v = adam.exp_avg_sq
    del adam, m
    gc.collect()
    np.testing.assert_allclose(v, 0.001, rtol=1e-6)


def test_gradients_are_read_not_written():
    _, grad_flat, params, grads = make_buffers()
    grad_flat[:] = 3.0
    for g in grads:
        g.flags.writeable = False  # read-only gradients are fine
    adam = Adam(params, grads, max_grad_norm=1.0)
    norm = adam.step()
    assert norm == pytest.approx(3.0 * math.sqrt(grad_flat.size), rel=1e-9)
    np.testing.assert_array_equal(grad_flat, 3.0)
    with pytest.raises(ValueError, match="read-only"):
        adam.zero_grad()
    assert adam.step(return_norm=True) == pytest.approx(norm)


def test_zero_grad():
    _, grad_flat, params, grads = make_buffers()
    grad_flat[:] = 2.0
    Adam(params, grads).zero_grad()
    assert not grad_flat.any()


def test_lr_is_settable_and_zero_freezes():
    flat, grad_flat, params, grads = make_buffers()
    adam = Adam(params, grads, weight_decay=0.1, decoupled_weight_decay=True)
    adam.lr = 0.0
    before = flat.copy()
    grad_flat[:] = 1.0
    adam.step()
    np.testing.assert_array_equal(flat, before)
    adam.lr = 3e-4
    assert adam.lr == 3e-4
    for bad in [-1e-3, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="lr must be"):
            adam.lr = bad
    with pytest.raises(TypeError):
        adam.lr = "fast"
    with pytest.raises(AttributeError):
        del adam.lr


def test_state_dict_round_trip_resumes_bitwise():
    def grads_at(step, n):
        return np.random.default_rng(100 + step).standard_normal(n).astype(np.float32)

    flat, grad_flat, params, grads = make_buffers()
    adam = Adam(params, grads, lr=1e-2, weight_decay=1e-3, max_grad_norm=50.0)
    for step in range(5):
        grad_flat[:] = grads_at(step, grad_flat.size)
        adam.step()
    state = adam.state_dict()
    saved_params = flat.copy()
    assert state["step"] == 5 and state["sizes"] == SIZES
    assert not np.shares_memory(state["exp_avg"], adam.exp_avg)  # a snapshot
    for step in range(5, 10):
        grad_flat[:] = grads_at(step, grad_flat.size)
        adam.step()
    straight = flat.copy()

    flat2, grad_flat2, params2, grads2 = make_buffers()
    flat2[:] = saved_params
    resumed = Adam(params2, grads2)  # other hyperparameters: the state brings them
    resumed.load_state_dict(state)
    assert resumed.lr == 1e-2 and resumed.max_grad_norm == 50.0
    assert resumed.weight_decay == 1e-3 and resumed.step_count == 5
    for step in range(5, 10):
        grad_flat2[:] = grads_at(step, grad_flat2.size)
        resumed.step()
    np.testing.assert_array_equal(flat2, straight)


def test_same_result_on_any_number_of_threads(threads):
    results = []
    for n in (1, 2):
        convirt.set_num_threads(n)
        flat, grad_flat, params, grads = make_buffers()
        adam = Adam(params, grads, lr=1e-2, max_grad_norm=10.0)
        rng = np.random.default_rng(3)
        norms = []
        for _ in range(3):
            grad_flat[:] = rng.standard_normal(grad_flat.size).astype(np.float32)
            norms.append(adam.step())
        results.append((flat.copy(), norms))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_no_reference_leaks():
    _, _, params, grads = make_buffers()
    counts = [sys.getrefcount(a) for a in params + grads]
    for _ in range(200):
        adam = Adam(params, grads)
        adam.step()
        adam.exp_avg  # noqa: B018 - a view made and dropped
        adam.state_dict()
        with pytest.raises(ValueError):
            Adam(params, grads[:2])
    del adam
    gc.collect()
    assert [sys.getrefcount(a) for a in params + grads] == counts


# ---- bad input (the array rules every entry point shares are in test_array_rules.py) ---


def test_mismatched_sizes_and_lengths():
    _, _, params, grads = make_buffers()
    with pytest.raises(ValueError, match="gradients\\[1\\] must have shape \\(37,\\)"):
        Adam(params, [grads[0], grads[2], grads[1]])
    with pytest.raises(ValueError, match="same length"):
        Adam(params, grads[:2])
    with pytest.raises(ValueError, match="empty"):
        Adam([], [])


def test_parameters_must_be_a_list():
    # each array's dtype, rank, layout and flags: test_array_rules.py
    with pytest.raises(TypeError, match="list of 1-D float32"):
        Adam(3, [np.zeros(10, np.float32)])


def test_overlapping_parameters():
    # a parameter over a gradient: test_array_rules.py
    flat = np.zeros(20, np.float32)
    g = np.zeros(20, np.float32)
    with pytest.raises(ValueError, match="parameters\\[0\\] overlaps parameters\\[1\\]"):
        Adam([flat[:10], flat[5:15]], [g[:10], g[10:]])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lr": 0.0}, "lr must be"),
        ({"lr": -1e-3}, "lr must be"),
        ({"lr": float("nan")}, "lr must be"),
        ({"betas": (1.0, 0.999)}, "betas"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"betas": (-0.1, 0.999)}, "betas"),
        ({"eps": 0.0}, "eps"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -1e-6}, "weight_decay"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"max_grad_norm": float("inf")}, "max_grad_norm"),
        # beyond the bounds that keep a finite gradient's update finite (adam.h)
        ({"lr": 1e300}, r"lr must be in \(0, 1.0\], got 1e\+300"),
        ({"lr": 1.5}, "lr must be"),
        ({"eps": 1e-300}, r"eps must be in \[1e-16"),
        ({"eps": 1e39}, "eps must be"),
        ({"weight_decay": 1e300}, r"weight_decay must be in \[0, 1\]"),
        ({"weight_decay": 2.0, "decoupled_weight_decay": True}, "weight_decay"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adam([np.zeros(4, np.float32)], [np.zeros(4, np.float32)], **kwargs)


def test_no_reinitialisation():
    p, g = np.zeros(4, np.float32), np.zeros(4, np.float32)
    adam = Adam([p], [g])
    with pytest.raises(RuntimeError, match="re-initialised"):
        adam.__init__([p], [g])


def test_bad_state_dicts():
    _, _, params, grads = make_buffers()
    adam = Adam(params, grads)
    good = adam.state_dict()
    n = adam.size
    cases = [
        ({**good, "exp_avg": np.zeros(n - 1, np.float32)}, ValueError, "shape"),
        ({**good, "exp_avg_sq": np.zeros(n, np.float64)}, TypeError, "float32"),
        ({**good, "exp_avg_sq": -np.ones(n, np.float32)}, ValueError, ">= 0"),
        ({**good, "step": -1}, ValueError, "step"),
        ({**good, "sizes": [37, 1000, 70000]}, ValueError, "sizes"),
        ({**good, "betas": (1.5, 0.9)}, ValueError, "betas"),
        ({k: v for k, v in good.items() if k != "exp_avg"}, KeyError, "exp_avg"),
        ({k: v for k, v in good.items() if k != "step"}, KeyError, "step"),
    ]
    for state, error, match in cases:
        with pytest.raises(error, match=match):
            adam.load_state_dict(state)
    with pytest.raises(TypeError, match="dict"):
        adam.load_state_dict([1, 2])
    # a failed load leaves the state alone
    assert adam.step_count == 0 and not adam.exp_avg.any()


def test_absurd_hyperparameters_are_refused_before_they_reach_the_weights():
    # adam.lr = 1e300 was accepted; the next step made the weights -inf (and NaN later)
    # with no error. Now the setter and load_state_dict refuse it, and nothing changes.
    params, grads = make_buffers()[2:]
    adam = Adam(params, grads, lr=1e-3)
    for bad in [1e300, 1.0 + 1e-9]:
        with pytest.raises(ValueError, match=r"lr must be in \[0, 1.0\]"):
            adam.lr = bad
    assert adam.lr == 1e-3
    for key, bad in [("lr", 1e300), ("eps", 1e-300), ("weight_decay", 1e300)]:
        with pytest.raises(ValueError, match=key):
            adam.load_state_dict({**adam.state_dict(), key: bad})
    assert (adam.lr, adam.eps, adam.weight_decay) == (1e-3, 1e-8, 1e-6)


@pytest.mark.parametrize("decoupled", [False, True])
def test_the_update_stays_finite_at_the_hyperparameter_bounds(decoupled):
    # The worst case the bounds allow: lr 1, eps 1e-16, weight decay 1, beta2 0 (v^ is
    # the last g^2 alone), a gradient of 1e19 (its square still finite in float32), then
    # zeros: each step is lr m^ / eps, about 1e35, and must stay finite.
    p, g = np.zeros(4, np.float32), np.zeros(4, np.float32)
    adam = Adam(
        [p],
        [g],
        lr=1.0,
        betas=(0.9, 0.0),
        eps=1e-16,
        weight_decay=1.0,
        decoupled_weight_decay=decoupled,
    )
    g[:] = [1e19, -1e19, 1.0, 0.0]
    adam.step()
    g[:] = 0.0
    for _ in range(20):
        adam.step()
        assert np.isfinite(p).all() and np.isfinite(adam.exp_avg).all(), p


def test_a_gradient_whose_square_overflows_is_refused():
    # A finite gradient of 1e22 made exp_avg_sq Inf: that parameter's step was 0 from
    # then on, silently, and the state it left could not be loaded back
    # (load_state_dict refuses an Inf moment). Now step() refuses it as it refuses a
    # NaN, and changes nothing; clipped, the same gradient is fine.
    p, g = np.ones(4, np.float32), np.array([1e22, 1.0, 0.0, -2.0], np.float32)
    adam = Adam([p], [g], lr=1e-3)
    with pytest.raises(NonFiniteError, match=r"gradients\[0\]\[0\] is 1e\+22"):
        adam.step()
    assert adam.step_count == 0 and (p == 1).all()
    assert not adam.exp_avg.any() and not adam.exp_avg_sq.any()
    g[0] = 1.8e19  # the largest taken: its square, 3.24e38, is finite
    adam.step()
    assert np.isfinite(adam.exp_avg_sq).all() and adam.step_count == 1
    Adam([np.ones(4, np.float32)], [g.copy()]).load_state_dict(adam.state_dict())

    clipped = Adam([p], [g], lr=1e-3, max_grad_norm=1.0)
    g[0] = 1e22
    assert clipped.step() == pytest.approx(1e22, rel=1e-6)
    assert np.isfinite(clipped.exp_avg_sq).all() and np.isfinite(p).all()


@pytest.mark.parametrize("decoupled", [False, True])
def test_coupled_weight_decay_counts_in_the_refusal_of_a_too_large_gradient(decoupled):
    # With coupled (L2) decay exp_avg_sq averages (g + wd p)^2, not g^2: a gradient of
    # 1e19 on a parameter of 1e19 with wd 1 made it Inf while g alone passed the check.
    # Now the sum is checked, as the update computes it; AdamW (decoupled) never adds
    # p to the moment, so the same step is fine there.
    p = np.array([1e19, 1.0, 0.0, 5e18], np.float32)
    g = np.array([1e19, 1.0, 0.0, 1e19], np.float32)
    adam = Adam([p], [g], lr=1e-3, weight_decay=1.0, decoupled_weight_decay=decoupled)
    before = p.copy()
    if decoupled:
        adam.step()
        assert np.isfinite(adam.exp_avg_sq).all() and adam.step_count == 1
        return
    with pytest.raises(
        NonFiniteError, match=r"gradients\[0\]\[0\] is 1e\+19 and weight_decay \(1"
    ):
        adam.step()
    assert adam.step_count == 0 and (p == before).all()
    assert not adam.exp_avg.any() and not adam.exp_avg_sq.any()
    p[0] = 0.0  # 1e19 + 5e18 = 1.5e19: its square is finite, the step is taken
    adam.step()
    assert np.isfinite(adam.exp_avg_sq).all() and adam.step_count == 1
    # a NaN parameter would make (g + wd p) NaN and the moments with it
    p[2] = np.nan
    with pytest.raises(NonFiniteError, match=r"gradients\[0\]\[2\] is 0 .*parameter nan"):
        adam.step()
    assert adam.step_count == 1 and np.isfinite(adam.exp_avg_sq).all()


def test_state_dict_survives_a_json_round_trip():
    # json.loads(json.dumps(state)) turns betas into a list: load_state_dict raised
    # "SystemError: new style getargs format but argument is not a tuple".
    _, grad_flat, params, grads = make_buffers()
    adam = Adam(params, grads, lr=1e-2, betas=(0.8, 0.99))
    grad_flat[:] = np.random.default_rng(5).standard_normal(grad_flat.size)
    adam.step()
    state = adam.state_dict()
    text = json.dumps(
        {k: v.tolist() if hasattr(v, "tolist") else v for k, v in state.items()}
    )
    loaded = json.loads(text)
    assert isinstance(loaded["betas"], list)
    for key in ("exp_avg", "exp_avg_sq"):
        loaded[key] = np.asarray(loaded[key], np.float32)
    other = Adam(*make_buffers()[2:])
    other.load_state_dict(loaded)
    assert other.betas == (0.8, 0.99) and other.step_count == 1
    np.testing.assert_array_equal(other.exp_avg, adam.exp_avg)
    other.load_state_dict({**loaded, "betas": np.array([0.5, 0.9])})  # any pair of numbers
    assert other.betas == (0.5, 0.9)
    for bad, error in [
        ([0.9], TypeError),
        ([0.9, 0.99, 0.999], TypeError),
        ("ab", TypeError),
        (["a", "b"], TypeError),
        (0.9, TypeError),
        ([0.9, 1.5], ValueError),
    ]:
        with pytest.raises(error, match="betas"):
            other.load_state_dict({**loaded, "betas": bad})
    assert other.betas == (0.5, 0.9)  # a failed load changes nothing


def test_state_dict_step_is_bounded_so_the_count_cannot_overflow():
    # load_state_dict({..., "step": 2**63 - 1}) was accepted; two steps later the count
    # wrapped to -2**63 + 1 and every parameter became NaN. The bias corrections use
    # (double)step, exact up to 2**53: the bound.
    p, g = np.zeros(4, np.float32), np.ones(4, np.float32)
    adam = Adam([p], [g], lr=1e-2)
    state = adam.state_dict()
    for bad in [2**63 - 1, 2**53 + 1, 2**64, -1, -(2**70)]:
        with pytest.raises(ValueError, match=r"state_dict\['step'\] must be an int in"):
            adam.load_state_dict({**state, "step": bad})
    for bad in ["3", 3.0, True]:
        with pytest.raises(TypeError, match="step"):
            adam.load_state_dict({**state, "step": bad})
    assert adam.step_count == 0
    adam.load_state_dict({**state, "step": np.int64(2**53 - 1)})
    adam.step()  # the count reaches 2**53, the most it counts
    assert adam.step_count == 2**53 and np.isfinite(p).all() and p.any()
    with pytest.raises(RuntimeError, match="the most it counts"):
        adam.step()
    assert adam.step_count == 2**53 and adam.state_dict()["step"] == 2**53


# ---- schedules: ReduceLROnPlateau --------------------------------------------------------


class Holder:
    """The smallest optimizer a schedule accepts: an lr attribute."""

    def __init__(self, lr):
        self.lr = lr


METRICS = (
    [1.0, 0.9, 0.8, 0.8, 0.79995, 0.81, 0.85, 0.8, 0.8, 0.82, 0.7, 0.7, 0.7]
    + [0.7] * 14
    + [0.6, float("nan")]
    + [0.65] * 10
    + [0.5 - 0.01 * k for k in range(5)]
)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # the paper's: factor 0.5, patience 5, rel 1e-4
        {"factor": 0.1, "patience": 2, "cooldown": 2},
        {"patience": 1, "min_lr": 2e-5},
        {"patience": 0, "threshold": 0.05, "threshold_mode": "abs"},
        {"mode": "max", "patience": 2},
        {
            "mode": "max",
            "patience": 1,
            "threshold": 0.01,
            "threshold_mode": "abs",
            "eps": 1e-4,
        },
    ],
)
def test_plateau_matches_torch(kwargs):
    torch_kwargs = {"factor": 0.5, "patience": 5, **kwargs}
    param = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([param], lr=1e-3)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(sgd, **torch_kwargs)
    adam = Adam([np.zeros(3, np.float32)], [np.zeros(3, np.float32)], lr=1e-3)
    ours = ReduceLROnPlateau(adam, **kwargs)
    lrs = []
    for metric in METRICS:
        reduced = ours.step(metric)
        before = sgd.param_groups[0]["lr"]
        theirs.step(metric)
        assert adam.lr == sgd.param_groups[0]["lr"]
        assert reduced == (sgd.param_groups[0]["lr"] != before)
        assert ours.num_bad_epochs == theirs.num_bad_epochs
        lrs.append(adam.lr)
    assert len(set(lrs)) > 1  # the sequence did reduce the learning rate


def test_plateau_paper_sequence_closed_form():
    holder = Holder(1e-4)
    schedule = ReduceLROnPlateau(holder)
    # improves for 3 epochs, then 5 bad epochs are tolerated; the 6th halves the lr
    for loss in [3.0, 2.0, 1.0]:
        assert not schedule.step(loss)
    for _ in range(5):
        assert not schedule.step(1.0)
    assert holder.lr == 1e-4
    assert schedule.step(1.0) and holder.lr == 5e-5
    # an improvement smaller than 1e-4 relative is not an improvement
    for _ in range(5):
        schedule.step(1.0 - 5e-5)
    assert schedule.step(1.0 - 5e-5) and holder.lr == 2.5e-5


def test_plateau_state_round_trip():
    a, b = Holder(1e-3), Holder(1e-3)
    first = ReduceLROnPlateau(a, patience=2, cooldown=1)
    for metric in METRICS[:12]:
        first.step(metric)
    state = first.state_dict()
    second = ReduceLROnPlateau(b)
    second.load_state_dict(state)
    b.lr = a.lr  # the lr itself travels in the optimizer's state
    assert second.patience == 2 and second.cooldown == 1
    for metric in METRICS[12:]:
        first.step(metric)
        second.step(metric)
        assert a.lr == b.lr
    with pytest.raises(KeyError, match="best"):
        second.load_state_dict({"last_epoch": 3})


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"factor": 1.0}, ValueError, "factor"),
        ({"factor": 0.0}, ValueError, "factor"),
        ({"patience": -1}, ValueError, "patience"),
        ({"patience": 1.5}, TypeError, "patience"),
        ({"mode": "avg"}, ValueError, "mode"),
        ({"threshold_mode": "pct"}, ValueError, "threshold_mode"),
        ({"threshold": -0.1}, ValueError, "threshold"),
        ({"min_lr": -1.0}, ValueError, "min_lr"),
        ({"cooldown": -2}, ValueError, "cooldown"),
    ],
)
def test_plateau_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ReduceLROnPlateau(Holder(1e-3), **kwargs)


def test_schedules_need_an_lr():
    with pytest.raises(TypeError, match="lr"):
        ReduceLROnPlateau(object())
    with pytest.raises(TypeError, match="lr"):
        WarmupCosine(object(), 10)


# ---- schedules: WarmupCosine ------------------------------------------------------------


def test_cosine_closed_form_at_chosen_steps():
    holder = Holder(1e-3)
    schedule = WarmupCosine(
        holder, 110, warmup_steps=10, min_lr=1e-5, warmup_start_factor=0.1
    )
    assert holder.lr == pytest.approx(1e-4)  # set at construction: t = 0
    values = {
        0: 1e-4,
        5: 1e-3 * (0.1 + 0.9 * 0.5),
        10: 1e-3,
        35: 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi / 4)) / 2,
        60: (1e-3 + 1e-5) / 2,
        110: 1e-5,
        150: 1e-5,
    }
    seen = {0: holder.lr}
    for t in range(1, 151):
        assert schedule.step() == holder.lr
        seen[t] = holder.lr
    for t, expected in values.items():
        assert seen[t] == pytest.approx(expected, rel=1e-12), t
        assert schedule.lr_at(t) == pytest.approx(expected, rel=1e-12)
    # monotone: up during warm-up, down after
    assert all(seen[t] < seen[t + 1] for t in range(10))
    assert all(seen[t] > seen[t + 1] for t in range(10, 110))


def test_cosine_from_zero_and_without_warmup():
    holder = Holder(2e-4)
    WarmupCosine(holder, 100, warmup_steps=4)
    assert holder.lr == 0.0  # the default start factor is 0
    schedule = WarmupCosine(Holder(2e-4), 100)
    assert schedule.lr == 2e-4
    assert schedule.lr_at(50) == pytest.approx(1e-4, rel=1e-12)
    assert schedule.lr_at(100) == pytest.approx(0.0, abs=1e-20)


@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_cosine_matches_torch(warmup):
    total, base, floor, start = 40, 1e-3, 1e-5, 0.2
    param = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([param], lr=base)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        sgd, T_max=total - warmup, eta_min=floor
    )
    if warmup:
        linear = torch.optim.lr_scheduler.LinearLR(
            sgd, start_factor=start, total_iters=warmup
        )
        theirs = torch.optim.lr_scheduler.SequentialLR(
            sgd, [linear, cosine], milestones=[warmup]
        )
    else:
        theirs = cosine
    holder = Holder(base)
    ours = WarmupCosine(
        holder, total, warmup_steps=warmup, min_lr=floor, warmup_start_factor=start
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(total + 1):
            assert holder.lr == pytest.approx(sgd.param_groups[0]["lr"], rel=1e-9), t
            sgd.step()
            theirs.step()
            ours.step()


def test_cosine_state_round_trip_sets_lr():
    a = Holder(1e-3)
    first = WarmupCosine(a, 50, warmup_steps=5, min_lr=1e-6)
    for _ in range(17):
        first.step()
    b = Holder(123.0)
    second = WarmupCosine(b, 10)
    second.load_state_dict(first.state_dict())
    assert b.lr == a.lr and second.last_step == 17
    for _ in range(40):
        assert first.step() == second.step()
    with pytest.raises(KeyError, match="base_lr"):
        second.load_state_dict({"last_step": 1, "total_steps": 5})


def test_cosine_drives_adam():
    adam = Adam([np.zeros(3, np.float32)], [np.zeros(3, np.float32)], lr=1e-3)
    schedule = WarmupCosine(adam, 20, warmup_steps=2)
    assert adam.lr == 0.0
    for _ in range(20):
        adam.step()
        schedule.step()
    assert adam.lr == 0.0 and schedule.base_lr == 1e-3


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((0,), {}, ValueError, "total_steps"),
        ((10.0,), {}, TypeError, "total_steps"),
        ((10,), {"warmup_steps": 11}, ValueError, "warmup_steps"),
        ((10,), {"warmup_steps": -1}, ValueError, "warmup_steps"),
        ((10,), {"min_lr": 2e-3}, ValueError, "min_lr"),
        ((10,), {"min_lr": -1.0}, ValueError, "min_lr"),
        ((10,), {"warmup_start_factor": 1.5}, ValueError, "warmup_start_factor"),
        ((10,), {"base_lr": 0.0}, ValueError, "base_lr"),
    ],
)
def test_cosine_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        WarmupCosine(Holder(1e-3), *args, **kwargs)
