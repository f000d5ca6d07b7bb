"""convirt.eval: label-fraction sampling, the linear probe, retrieval against hand-computed
answers, the CheXpert 8x200 readers on fixtures in that format, t-SNE, bad input."""

import csv

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from convirt import eval as ev

FEW_CS = (0.01, 1.0, 100.0)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# ---- sample_fraction ---------------------------------------------------------------------


def imbalanced_labels(n=1000, seed=0):
    """Classes 0, 1, 2 at 80%, 19.5%, 0.5% (5 samples of class 2 in 1000)."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 800 + [1] * 195 + [2] * 5)[:n]
    return rng.permutation(labels)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_sample_fraction_size_classes_and_strata(fraction):
    labels = imbalanced_labels()
    idx = ev.sample_fraction(labels, fraction, seed=3)
    assert len(idx) == round(fraction * 1000)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, unique
    assert idx.min() >= 0 and idx.max() < 1000
    counts = np.bincount(labels[idx], minlength=3)
    assert np.all(counts >= 1), "a class lost all its samples"
    # Stratified: each class within one sample of its share (or at the floor of 1).
    share = fraction * np.bincount(labels)
    assert np.all((np.abs(counts - share) < 1) | (counts == 1))


def test_sample_fraction_is_deterministic_and_seeded():
    labels = imbalanced_labels()
    a = ev.sample_fraction(labels, 0.1, seed=1)
    np.testing.assert_array_equal(a, ev.sample_fraction(labels, 0.1, seed=1))
    assert not np.array_equal(a, ev.sample_fraction(labels, 0.1, seed=2))


def test_sample_fraction_of_one_is_everything():
    everything = ev.sample_fraction(imbalanced_labels(), 1.0)
    np.testing.assert_array_equal(everything, np.arange(1000))


def test_sample_fraction_grows_to_keep_every_class():
    # 1% of 100 is one sample, but three classes need three.
    labels = np.repeat([0, 1, 2], [90, 8, 2])
    idx = ev.sample_fraction(labels, 0.01, seed=0)
    assert len(idx) == 3 and sorted(labels[idx]) == [0, 1, 2]
    idx = ev.sample_fraction(labels, 0.05, seed=0, min_per_class=2)
    assert len(idx) == 6 and np.all(np.bincount(labels[idx]) == 2)


def test_sample_fraction_string_labels():
    labels = np.array(["edema"] * 50 + ["normal"] * 48 + ["fracture"] * 2)
    idx = ev.sample_fraction(labels, 0.1, seed=4)
    assert len(idx) == 10 and set(labels[idx]) == {"edema", "normal", "fracture"}


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_sample_fraction_multilabel_keeps_positives_and_negatives(fraction):
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=(500, 6)) < [0.5, 0.2, 0.05, 0.01, 0.9, 0.995]).astype(int)
    labels[0, 3] = 1  # at least one positive in the rare column
    labels[1, 5] = 0  # and one negative in the near-always-positive one
    idx = ev.sample_fraction(labels, fraction, seed=2)
    sub = labels[idx]
    assert np.all(sub.sum(axis=0) >= 1) and np.all((1 - sub).sum(axis=0) >= 1)
    assert len(np.unique(idx)) == len(idx)
    if fraction >= 0.1:
        assert len(idx) == round(fraction * 500)
    else:  # 5 requested; 6 columns may need up to 12 to keep both classes
        assert 5 <= len(idx) <= 12


def test_sample_fraction_multilabel_bool_and_single_column():
    labels = np.zeros((40, 1), dtype=bool)
    labels[:3] = True
    idx = ev.sample_fraction(labels, 0.05, seed=0)
    assert len(idx) == 2 and labels[idx].any() and not labels[idx].all()


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, np.nan])
def test_sample_fraction_bad_fraction(fraction):
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        ev.sample_fraction(np.arange(10) % 2, fraction)


@pytest.mark.parametrize("fraction", ["0.5", None, True])
def test_sample_fraction_fraction_not_a_number(fraction):
    with pytest.raises(TypeError, match=r"fraction must be a number in \(0, 1\]"):
        ev.sample_fraction(np.arange(10) % 2, fraction)


def test_sample_fraction_too_few_positives():
    with pytest.raises(
        ValueError,
        match=r"too few samples to keep 2 of every class: "
        r"7 \(1\)",
    ):
        ev.sample_fraction(np.array([0] * 20 + [7]), 0.5, min_per_class=2)
    labels = np.zeros((20, 3), int)
    labels[:5, 0] = 1
    labels[:, 2] = 1
    with pytest.raises(
        ValueError,
        match=r"column 1 \(0 positives, 20 negatives\), "
        r"column 2 \(20 positives, 0 negatives\)",
    ):
        ev.sample_fraction(labels, 0.5)


def test_sample_fraction_bad_labels():
    with pytest.raises(
        ValueError,
        match=r"multi-label labels must be 0 or 1, got -1.0 at "
        r"\[2, 1\]",
    ):
        labels = np.ones((5, 2))
        labels[2, 1] = -1
        ev.sample_fraction(labels, 0.5)
    with pytest.raises(ValueError, match=r"non-empty 1-D array"):
        ev.sample_fraction(np.array([]), 0.5)
    with pytest.raises(ValueError, match=r"min_per_class must be an integer >= 1"):
        ev.sample_fraction(np.arange(4) % 2, 0.5, min_per_class=0)


# ---- linear probe ------------------------------------------------------------------------


def separable(n, d=8, classes=2, seed=0, margin=6.0):
    """Features whose first `classes` dimensions carry the class (one-hot * margin)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[np.arange(n), y] += margin
    return x, y


def separable_multilabel(n, k=3, d=8, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=(n, k)) < 0.3).astype(int)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[:, :k] += 6.0 * y
    return x, y


def test_probe_on_separable_features_gives_auc_near_one():
    x, y = separable(1200)
    result = ev.linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], Cs=FEW_CS)
    assert result.task == "binary" and result.metric == "auc"
    assert result.scores.shape == (3, 3)
    assert np.all(result.scores > 0.98), result
    assert np.all(np.isin(result.C, FEW_CS))
    # The carved validation split takes 20%: 800 remain; 1% and 10% of them.
    np.testing.assert_array_equal(result.n_train, [[8] * 3, [80] * 3, [800] * 3])


def test_probe_on_random_features_gives_auc_near_half():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1600, 8))
    y = rng.integers(0, 2, 1600)
    result = ev.linear_probe(
        x[:1000], y[:1000], x[1000:], y[1000:], fractions=(0.1, 1.0), Cs=FEW_CS
    )
    assert np.all(np.abs(result.scores - 0.5) < 0.08), result


def test_probe_matches_a_hand_built_pipeline():
    x, y = separable(300, margin=1.0, seed=2)  # overlapping classes: AUC well below 1
    val = slice(0, 60)
    train = slice(60, 200)
    test = slice(200, 300)
    result = ev.linear_probe(
        x[train],
        y[train],
        x[test],
        y[test],
        val_features=x[val],
        val_labels=y[val],
        fractions=(1.0,),
        seeds=(0,),
        Cs=FEW_CS,
    )
    val_auc = []
    for C in FEW_CS:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
        model.fit(x[train], y[train])
        val_auc.append(roc_auc_score(y[val], model.decision_function(x[val])))
    best = int(np.argmax(val_auc))
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=FEW_CS[best], max_iter=1000)
    )
    model.fit(x[train], y[train])
    expected = roc_auc_score(y[test], model.decision_function(x[test]))
    assert result.C[0, 0] == FEW_CS[best]
    assert result.val_scores[0, 0] == pytest.approx(max(val_auc), abs=1e-3)
    assert result.scores[0, 0] == pytest.approx(expected, abs=1e-3)
    assert 0.6 < expected < 0.95
    assert result.n_train[0, 0] == 140


def test_probe_multilabel():
    x, y = separable_multilabel(700)
    names = ["Edema", "Fracture", "Pneumonia"]
    result = ev.linear_probe(
        x[:500],
        y[:500],
        x[500:],
        y[500:],
        fractions=(0.05, 1.0),
        seeds=(0, 1),
        Cs=FEW_CS,
        class_names=names,
    )
    assert result.task == "multilabel" and result.class_names == names
    assert result.per_class.shape == (2, 2, 3)
    assert np.all(result.scores > 0.98)
    np.testing.assert_allclose(result.scores, result.per_class.mean(axis=2))
    frame = result.to_frame(per_class=True)
    assert list(frame.columns) == ["n_train", "mean", "std"] + names


def test_probe_multiclass_auc_and_accuracy():
    x, y = separable(900, classes=3)
    auc = ev.linear_probe(
        x[:600], y[:600], x[600:], y[600:], fractions=(0.1, 1.0), seeds=(0,), Cs=FEW_CS
    )
    acc = ev.linear_probe(
        x[:600],
        y[:600],
        x[600:],
        y[600:],
        fractions=(0.1, 1.0),
        seeds=(0,),
        Cs=FEW_CS,
        metric="accuracy",
    )
    assert auc.task == "multiclass" and auc.per_class.shape == (2, 1, 3)
    assert np.all(auc.scores > 0.98) and np.all(acc.scores > 0.95)
    assert acc.metric_name == "accuracy"


def test_probe_string_labels_and_explicit_val():
    x, y = separable(400)
    names = np.array(["normal", "abnormal"])[y]
    result = ev.linear_probe(
        x[:200],
        names[:200],
        x[300:],
        names[300:],
        val_features=x[200:300],
        val_labels=names[200:300],
        fractions=(1.0,),
        seeds=(0, 1),
        Cs=FEW_CS,
    )
    assert result.class_names == ["abnormal", "normal"]
    assert result.n_train[0, 0] == 200  # nothing carved out when val is given
    assert result.scores[0, 0] == result.scores[0, 1]  # fraction 1: the same fit
    assert result.std[0] == 0


def test_probe_result_table_frame_and_plot():
    x, y = separable(500, margin=1.5)
    result = ev.linear_probe(x[:400], y[:400], x[400:], y[400:], Cs=FEW_CS, name="ConVIRT")
    text = repr(result)
    assert text.startswith("ProbeResult(ConVIRT: linear probe AUC (binary)")
    for row, fraction in zip(text.splitlines()[2:], ("1%", "10%", "100%")):
        assert row.split()[0] == fraction
        assert f"{result.mean[['1%', '10%', '100%'].index(fraction)]:.4f}" in row
    html = result._repr_html_()
    assert "<table>" in html and "ConVIRT" in html and "100%" in html
    np.testing.assert_allclose(result.mean, result.scores.mean(axis=1))
    np.testing.assert_allclose(result.std, result.scores.std(axis=1, ddof=1))
    frame = result.to_frame()
    assert list(frame.index) == [0.01, 0.1, 1.0]
    np.testing.assert_allclose(frame["mean"], result.mean)
    long = result.to_frame(per_seed=True)
    assert len(long) == 9 and list(long.columns) == ["n_train", "C", "val_auc", "auc"]
    fig = result.plot()
    ax = fig.axes[0]
    other = ev.linear_probe(x[:400], np.roll(y[:400], 7), x[400:], y[400:], Cs=FEW_CS)
    assert other.plot(ax=ax, label="random") is fig
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ConVIRT", "random"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1%", "10%", "100%"]


def test_probe_counts_unconverged_fits():
    x, y = separable(300, d=30, margin=1.0)
    result = ev.linear_probe(
        x[:200],
        y[:200],
        x[200:],
        y[200:],
        fractions=(1.0,),
        seeds=(0,),
        Cs=(1e4,),
        max_iter=2,
    )
    assert result.n_not_converged >= 1
    assert "stopped at max_iter" in repr(result)


def test_probe_features_wrong_length_labels():
    x, y = separable(100)
    with pytest.raises(
        ValueError,
        match=r"train_labels has 99 rows but train_features has "
        r"80: one label \(row\) per sample",
    ):
        ev.linear_probe(x[:80], y[:99], x[80:], y[80:])
    with pytest.raises(
        ValueError,
        match=r"test_labels has 19 rows but test_features has "
        r"20",
    ):
        ev.linear_probe(x[:80], y[:80], x[80:], y[81:])
    with pytest.raises(ValueError, match=r"val_labels has 5 rows but val_features has 10"):
        ev.linear_probe(
            x[:70], y[:70], x[80:], y[80:], val_features=x[70:80], val_labels=y[70:75]
        )


@pytest.mark.parametrize("fractions", [(0, 0.1), (0.1, 1.5), (0.0,)])
def test_probe_bad_fraction(fractions):
    x, y = separable(100)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        ev.linear_probe(x[:80], y[:80], x[80:], y[80:], fractions=fractions)


def test_probe_nan_features():
    x, y = separable(100)
    bad = x.copy()
    bad[5, 2] = np.nan
    with pytest.raises(
        ValueError,
        match=r"train_features contains NaN or Inf in 1 of 80 "
        r"rows \(first: row 5\)",
    ):
        ev.linear_probe(bad[:80], y[:80], x[80:], y[80:])
    bad[85, 0] = np.inf
    with pytest.raises(ValueError, match=r"test_features contains NaN or Inf"):
        ev.linear_probe(x[:80], y[:80], bad[80:], y[80:])


def test_probe_bad_shapes_and_options():
    x, y = separable(100)
    with pytest.raises(
        ValueError,
        match=r"test_features has 5 features, but the training "
        r"features have 8",
    ):
        ev.linear_probe(x[:80], y[:80], x[80:, :5], y[80:])
    with pytest.raises(
        ValueError,
        match=r"must be a 2-D array \(n_samples, n_features\), "
        r"got shape \(80,\)",
    ):
        ev.linear_probe(x[:80, 0], y[:80], x[80:], y[80:])
    with pytest.raises(ValueError, match=r"pass both val_features and val_labels"):
        ev.linear_probe(x[:80], y[:80], x[80:], y[80:], val_features=x[:10])
    with pytest.raises(ValueError, match=r"metric must be one of"):
        ev.linear_probe(x[:80], y[:80], x[80:], y[80:], metric="f1")
    with pytest.raises(ValueError, match=r"Cs must be positive finite"):
        ev.linear_probe(x[:80], y[:80], x[80:], y[80:], Cs=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"val_size must be a share in \(0, 1\)"):
        ev.linear_probe(x[:80], y[:80], x[80:], y[80:], val_size=1.0)
    with pytest.raises(ValueError, match=r"class_names has 3 names for 2 classes"):
        ev.linear_probe(x[:80], y[:80], x[80:], y[80:], class_names=["a", "b", "c"])
    with pytest.raises(TypeError, match=r"must be a real-valued array, got dtype <U1"):
        ev.linear_probe(np.full((80, 2), "a"), y[:80], x[80:], y[80:])


def test_probe_bad_labels():
    x, y = separable(100)
    with pytest.raises(ValueError, match=r"need at least two classes, got only \[1\.0\]"):
        ev.linear_probe(x[:80], np.ones(80), x[80:], y[80:])
    with pytest.raises(
        ValueError,
        match=r"test_labels has classes the training labels "
        r"lack: \[5\]",
    ):
        ev.linear_probe(x[:80], y[:80], x[80:], np.full(20, 5))
    with pytest.raises(ValueError, match=r"multilabel=True needs 2-D train_labels"):
        ev.linear_probe(x[:80], y[:80], x[80:], y[80:], multilabel=True)
    ym = np.stack([y, 1 - y], axis=1)
    ym[3, 0] = -1
    with pytest.raises(
        ValueError,
        match=r"multi-label train_labels must be 0 or 1, got -1 "
        r"at \[3, 0\]; map uncertain",
    ):
        ev.linear_probe(x[:80], ym[:80], x[80:], ym[80:])
    with pytest.raises(ValueError, match=r"test_labels must have shape \(n, 2\)"):
        ev.linear_probe(x[:80], np.abs(ym[:80]), x[80:], y[80:])


def test_probe_too_few_positives():
    x, y = separable(100)
    y = np.zeros(100, int)
    y[0] = 1  # one positive: the validation split takes it, training has none left
    with pytest.raises(
        ValueError,
        match=r"too few samples of classes \['1'\] to carve a "
        r"validation split",
    ):
        ev.linear_probe(x[:80], y[:80], x[80:], np.arange(20) % 2)
    ym = np.zeros((80, 2), int)
    ym[:40, 0] = 1
    with pytest.raises(
        ValueError,
        match=r"too few positives or negatives .* every column: "
        r"column 1 \(0 positives",
    ):
        ev.linear_probe(x[:80], ym, x[80:], np.ones((20, 2), int))


def test_probe_test_split_without_both_classes():
    x, y = separable_multilabel(300)
    with pytest.raises(ValueError, match=r"test split has no class \(column\) with both"):
        ev.linear_probe(
            x[:200],
            y[:200],
            x[200:],
            np.zeros((100, 3), int),
            fractions=(1.0,),
            seeds=(0,),
            Cs=FEW_CS,
        )


# ---- retrieval ---------------------------------------------------------------------------


def hand_built_retrieval():
    """Candidates near three axes with known labels, and queries on or near the axes."""
    # candidate index:       0    1    2    3    4    5    6    7
    candidates = np.array(
        [
            [1.0, 0.0, 0.0],  # axis 0
            [0.9, 0.1, 0.0],  # mostly axis 0
            [0.0, 1.0, 0.0],  # axis 1
            [0.0, 0.9, 0.1],  # mostly axis 1
            [0.0, 0.0, 1.0],  # axis 2
            [0.8, 0.0, 0.2],  # axis 0 then 2
            [0.0, 0.1, 0.9],  # mostly axis 2
            [0.0, 0.8, 0.2],
        ]
    )  # axis 1 then 2
    # labels per category (columns A, B, C): 1 positive, 0 negative, -1 uncertain, NaN
    labels = np.array(
        [
            [1, 0, 0],
            [0, 0, 0],
            [0, 1, 0],
            [0, -1, 0],
            [0, 0, 1],
            [1, 0, np.nan],
            [0, 0, 1],
            [0, 1, 1],
        ]
    )
    queries = np.array(
        [
            [1.0, 0.0, 0.0],  # category A
            [0.0, 1.0, 0.0],  # category B
            [0.0, 0.0, 1.0],  # category C
            [0.0, 0.9, 0.1],
        ]
    )  # category B
    return queries, np.array([0, 1, 2, 1]), candidates, labels


def test_retrieval_hand_computed_precision():
    queries, categories, candidates, labels = hand_built_retrieval()
    result = ev.retrieval(
        queries,
        categories,
        candidates,
        labels,
        ks=(1, 2, 3),
        category_names=["A", "B", "C"],
    )
    # Rankings by cosine similarity, worked out by hand, and the hits they give:
    #   q0 (A): 0 (1), 1 (.994), 5 (.970)                hits 1, 0, 1
    #   q1 (B): 2 (1), 3 (.994), 7 (.970)                hits 1, 0 (uncertain), 1
    #   q2 (C): 4 (1), 6 (.994), 5 (.243, tied with 7)  hits 1, 1, 0 (blank)
    #   q3 (B): 3 (1), 2 (.994), 7 (.991)                hits 0 (uncertain), 1, 1
    np.testing.assert_array_equal(
        result.top_indices, [[0, 1, 5], [2, 3, 7], [4, 6, 5], [3, 2, 7]]
    )
    expected_per_query = np.array(
        [[1, 1 / 2, 2 / 3], [1, 1 / 2, 2 / 3], [1, 1, 2 / 3], [0, 1 / 2, 2 / 3]]
    )
    np.testing.assert_allclose(result.per_query, expected_per_query)
    # Category B averages its two queries; the mean weighs categories equally.
    np.testing.assert_allclose(
        result.precision, [[1, 1 / 2, 2 / 3], [1 / 2, 1 / 2, 2 / 3], [1, 1, 2 / 3]]
    )
    np.testing.assert_allclose(result.mean, [5 / 6, 2 / 3, 2 / 3])
    np.testing.assert_allclose(result.mean_over_queries, expected_per_query.mean(axis=0))
    np.testing.assert_array_equal(result.n_queries, [1, 2, 1])
    assert result.category_names == ["A", "B", "C"]


def test_retrieval_is_cosine_not_dot_product():
    queries, categories, candidates, labels = hand_built_retrieval()
    scales = np.array([1, 100, 0.01, 7, 3, 50, 0.5, 2])[:, None]
    a = ev.retrieval(queries, categories, candidates, labels, ks=(1, 2, 3))
    b = ev.retrieval(queries * 13, categories, candidates * scales, labels, ks=(1, 2, 3))
    np.testing.assert_array_equal(a.top_indices, b.top_indices)
    np.testing.assert_array_equal(a.precision, b.precision)


def test_retrieval_ties_go_to_the_lower_index_and_names_work():
    candidates = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]])
    labels = np.array([[0], [1], [1], [0], [1]])
    result = ev.retrieval(
        np.array([[2.0, 0.0]]),
        ["Edema"],
        candidates,
        labels,
        ks=(1, 2, 5),
        category_names=["Edema"],
    )
    np.testing.assert_array_equal(result.top_indices, [[0, 1, 2, 3, 4]])
    np.testing.assert_allclose(result.per_query, [[0, 0.5, 0.6]])


def test_retrieval_only_lists_categories_with_queries():
    queries, categories, candidates, labels = hand_built_retrieval()
    result = ev.retrieval(
        queries[[0, 2]],
        categories[[0, 2]],
        candidates,
        labels,
        ks=(1,),
        category_names=["A", "B", "C"],
    )
    assert result.category_names == ["A", "C"]
    np.testing.assert_array_equal(result.query_categories, [0, 1])


def test_retrieval_table_and_frame():
    queries, categories, candidates, labels = hand_built_retrieval()
    result = ev.retrieval(
        queries, categories, candidates, labels, ks=(1, 2), category_names=["A", "B", "C"]
    )
    lines = repr(result).splitlines()
    assert lines[1].split() == ["category", "queries", "P@1", "P@2"]
    assert lines[-1].split() == ["mean", "4", "0.833", "0.667"]
    assert "<table>" in result._repr_html_()
    frame = result.to_frame()
    assert list(frame.index) == ["A", "B", "C", "mean"]
    assert list(frame.columns) == ["queries", "P@1", "P@2"]
    assert frame.loc["mean", "queries"] == 4
    assert frame.loc["B", "P@1"] == 0.5


def test_top_k_chunks_agree():
    rng = np.random.default_rng(0)
    q, c = rng.standard_normal((10, 4)), rng.standard_normal((30, 4))
    idx, sims = ev.top_k(q, c, k=7)
    idx_small, sims_small = ev.top_k(q, c, k=7, chunk_size=3)
    np.testing.assert_array_equal(idx, idx_small)
    np.testing.assert_allclose(sims, sims_small)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        c / np.linalg.norm(c, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(sims, -np.sort(-cos, axis=1)[:, :7])
    assert np.all(np.diff(sims, axis=1) <= 0)


@pytest.mark.parametrize(
    "chunk_size, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError)]
)
def test_top_k_chunk_size_is_checked(chunk_size, error):
    # chunk_size=0 raised "range() arg 3 must not be zero"
    rng = np.random.default_rng(0)
    q, c = rng.standard_normal((4, 3)), rng.standard_normal((6, 3))
    with pytest.raises(error, match="chunk_size must be a positive integer"):
        ev.top_k(q, c, k=2, chunk_size=chunk_size)


def test_retrieval_bad_input():
    queries, categories, candidates, labels = hand_built_retrieval()
    with pytest.raises(ValueError, match=r"every k must be in \[1, 8\] .* got \(5, 10\)"):
        ev.retrieval(queries, categories, candidates, labels, ks=(5, 10))
    with pytest.raises(
        ValueError,
        match=r"query_embeddings have dimension 2 but "
        r"candidate_embeddings have 3",
    ):
        ev.retrieval(np.ones((4, 2)), categories, candidates, labels, ks=(1,))
    zero = candidates.copy()
    zero[4] = 0
    with pytest.raises(
        ValueError,
        match=r"candidate_embeddings has all-zero rows \(first: "
        r"4\)",
    ):
        ev.retrieval(queries, categories, zero, labels, ks=(1,))
    nan = queries.copy()
    nan[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"query_embeddings contains NaN or Inf"):
        ev.retrieval(nan, categories, candidates, labels, ks=(1,))
    with pytest.raises(ValueError, match=r"query_categories must be in \[0, 3\) .* got 3"):
        ev.retrieval(queries, [0, 1, 2, 3], candidates, labels, ks=(1,))
    with pytest.raises(ValueError, match=r"query categories \['D'\] are not among"):
        ev.retrieval(
            queries,
            ["A", "B", "C", "D"],
            candidates,
            labels,
            ks=(1,),
            category_names=["A", "B", "C"],
        )
    with pytest.raises(
        ValueError,
        match=r"candidate_labels has 7 rows but "
        r"candidate_embeddings has 8",
    ):
        ev.retrieval(queries, categories, candidates, labels[:7], ks=(1,))
    with pytest.raises(
        ValueError,
        match=r"query_categories has 3 rows but "
        r"query_embeddings has 4",
    ):
        ev.retrieval(queries, categories[:3], candidates, labels, ks=(1,))
    with pytest.raises(ValueError, match=r"category_names has 2 names for 3 columns"):
        ev.retrieval(
            queries, categories, candidates, labels, ks=(1,), category_names=["A", "B"]
        )


# ---- the CheXpert 8x200 protocol files ---------------------------------------------------


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def image_path(patient, view=1):
    return f"CheXpert-v1.0/train/patient{patient:05d}/study1/view{view}_frontal.jpg"


@pytest.fixture
def chexpert(tmp_path):
    """A CheXpert folder with 3 query images and 6 candidates, and the protocol CSVs.

    Returns the root (the CheXpert-v1.0 folder) and the expected candidate labels for
    the query categories [Edema, Cardiomegaly] under uncertain='negative'/'positive'.
    """
    root = tmp_path / "CheXpert-v1.0"
    for patient in range(1, 10):
        path = tmp_path / image_path(patient)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\xff\xd8 not really a jpeg")
    write_csv(
        root / "image_queries.csv",
        ["Variable", "Path"],
        [
            ["Edema", image_path(1)],
            ["Cardiomegaly", image_path(2)],
            ["Edema", image_path(3)],
        ],
    )
    write_csv(
        root / "text_queries.csv",
        ["Variable", "Text"],
        [["Edema", "mild pulmonary edema"], ["Cardiomegaly", "the heart is enlarged"]],
    )
    header = ["Path", "Sex", "Age"] + list(ev.CHEXPERT_LABELS)
    values = {  # patient: (Edema, Cardiomegaly) as written in the CSV
        4: ("1.0", ""),
        5: ("-1.0", "1.0"),
        6: ("0.0", "1"),
        7: ("", "-1"),
        8: ("1", "0"),
        9: ("", ""),
    }
    rows = []
    for patient, (edema, cardio) in values.items():
        row = {name: "" for name in ev.CHEXPERT_LABELS}
        row["Edema"], row["Cardiomegaly"] = edema, cardio
        rows.append(
            [image_path(patient), "Female", "60"]
            + [row[name] for name in ev.CHEXPERT_LABELS]
        )
    write_csv(root / "candidates.csv", header, rows)
    negative = np.array([[1, 0], [0, 1], [0, 1], [0, 0], [1, 0], [0, 0]])
    positive = np.array([[1, 0], [1, 1], [0, 1], [0, 1], [1, 0], [0, 0]])
    return root, negative, positive


def test_read_image_queries(chexpert):
    root, negative, _ = chexpert
    data = ev.read_chexpert_8x200(root, "image_queries.csv", "candidates.csv")
    assert data.query_kind == "image"
    assert data.category_names == ["Edema", "Cardiomegaly"]
    np.testing.assert_array_equal(data.query_categories, [0, 1, 0])
    assert data.queries[0] == str(root.parent / image_path(1))
    assert data.candidate_paths[-1] == str(root.parent / image_path(9))
    np.testing.assert_array_equal(data.candidate_labels, negative)
    assert data.candidate_labels.dtype == np.int8
    assert "3 in 2 categories" in repr(data)


def test_read_uncertain_as_positive(chexpert):
    root, _, positive = chexpert
    data = ev.read_chexpert_8x200(
        root, root / "image_queries.csv", "candidates.csv", uncertain="positive"
    )
    np.testing.assert_array_equal(data.candidate_labels, positive)


def test_read_text_queries(chexpert):
    root, negative, _ = chexpert
    data = ev.read_chexpert_8x200(root, "text_queries.csv", "candidates.csv")
    assert data.query_kind == "text"
    assert data.queries == ["mild pulmonary edema", "the heart is enlarged"]
    np.testing.assert_array_equal(data.query_categories, [0, 1])
    np.testing.assert_array_equal(data.candidate_labels, negative)


def test_read_paths_relative_to_the_root(chexpert, tmp_path):
    root, _, _ = chexpert
    write_csv(
        root / "relative.csv",
        ["Variable", "Path"],
        [["Edema", "train/patient00001/study1/view1_frontal.jpg"]],
    )
    data = ev.read_chexpert_8x200(root, "relative.csv", "candidates.csv")
    assert data.queries == [str(root / "train/patient00001/study1/view1_frontal.jpg")]


def test_read_then_evaluate(chexpert):
    root, _, _ = chexpert
    data = ev.read_chexpert_8x200(root, "image_queries.csv", "candidates.csv")
    # Embeddings by hand: Edema queries point at candidates 0 (patient 4) then 4
    # (patient 8); the Cardiomegaly query at 3 (patient 7, uncertain) then 1 and 2.
    candidates = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.2, 1.0, 0.0],
            [0.1, 1.0, 0.0],
            [0.0, 1.0, 0.5],
            [0.9, 0.1, 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    queries = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.6], [1.0, 0.0, 0.0]])
    result = data.evaluate(queries, candidates, ks=(1, 2, 3))
    # Edema: 0 (hit), 4 (hit), 1 (uncertain: miss). Cardiomegaly: 3 (uncertain: miss),
    # then 1 and 2 (hits).
    np.testing.assert_allclose(result.precision, [[1, 1, 2 / 3], [0, 1 / 2, 2 / 3]])


def test_missing_image_files_are_listed(chexpert, tmp_path):
    root, _, _ = chexpert
    (tmp_path / image_path(5)).unlink()
    (tmp_path / image_path(8)).unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"2 of 6 image files listed in "
        r".*candidates.csv are missing .*"
        r"patient00005.*patient00008",
    ):
        ev.read_chexpert_8x200(root, "image_queries.csv", "candidates.csv")
    (tmp_path / image_path(2)).unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"1 of 3 image files listed in "
        r".*image_queries.csv are missing",
    ):
        ev.read_chexpert_8x200(root, "image_queries.csv", "candidates.csv")
    data = ev.read_chexpert_8x200(
        root, "image_queries.csv", "candidates.csv", check_files=False
    )
    assert len(data.candidate_paths) == 6


def test_many_missing_files_are_summarised(chexpert):
    root, _, _ = chexpert
    write_csv(
        root / "many.csv",
        ["Path", "Edema", "Cardiomegaly"],
        [[f"train/nowhere{i}.jpg", "1", "0"] for i in range(25)],
    )
    with pytest.raises(FileNotFoundError, match=r"25 of 25 .* and 15 more"):
        ev.read_chexpert_8x200(root, "text_queries.csv", "many.csv")


def test_query_csv_without_the_expected_columns(chexpert):
    root, _, _ = chexpert
    write_csv(root / "bad.csv", ["Category", "Path"], [["Edema", image_path(1)]])
    with pytest.raises(
        ValueError,
        match=r"bad.csv must have the columns \['Variable', "
        r"'Path or Text'\]; its header is \['Category', "
        r"'Path'\]",
    ):
        ev.read_chexpert_8x200(root, "bad.csv", "candidates.csv")
    write_csv(root / "bad.csv", ["Variable", "Image"], [["Edema", image_path(1)]])
    with pytest.raises(ValueError, match=r"must have the columns"):
        ev.read_chexpert_8x200(root, "bad.csv", "candidates.csv")
    write_csv(
        root / "bad.csv", ["Variable", "Path", "Text"], [["Edema", image_path(1), "x"]]
    )
    with pytest.raises(ValueError, match=r"has both a Path and a Text column"):
        ev.read_chexpert_8x200(root, "bad.csv", "candidates.csv")


def test_candidate_csv_without_the_expected_columns(chexpert):
    root, _, _ = chexpert
    write_csv(root / "bad.csv", ["Path", "Edema"], [[image_path(4), "1"]])
    with pytest.raises(
        ValueError,
        match=r"bad.csv must have the columns \['Path', "
        r"'Edema', 'Cardiomegaly'\]",
    ):
        ev.read_chexpert_8x200(root, "image_queries.csv", "bad.csv")
    write_csv(
        root / "bad.csv", ["File", "Edema", "Cardiomegaly"], [[image_path(4), "1", ""]]
    )
    with pytest.raises(ValueError, match=r"must have the columns \['Path'"):
        ev.read_chexpert_8x200(root, "image_queries.csv", "bad.csv")


def test_bad_label_values_and_rows(chexpert):
    root, _, _ = chexpert
    write_csv(
        root / "bad.csv",
        ["Path", "Edema", "Cardiomegaly"],
        [[image_path(4), "1", ""], [image_path(5), "yes", ""]],
    )
    with pytest.raises(
        ValueError,
        match=r"bad.csv, line 3, column 'Edema': label 'yes' is "
        r"not 1, 0, -1 or blank",
    ):
        ev.read_chexpert_8x200(root, "image_queries.csv", "bad.csv")
    write_csv(root / "bad.csv", ["Variable", "Text"], [["Edema", "x"], ["", "y"]])
    with pytest.raises(ValueError, match=r"bad.csv, line 3: empty Variable or Text"):
        ev.read_chexpert_8x200(root, "bad.csv", "candidates.csv")
    write_csv(root / "bad.csv", ["Variable", "Text"], [])
    with pytest.raises(ValueError, match=r"bad.csv has a header but no rows"):
        ev.read_chexpert_8x200(root, "bad.csv", "candidates.csv")


def test_missing_root_and_csv(chexpert, tmp_path):
    root, _, _ = chexpert
    with pytest.raises(
        FileNotFoundError,
        match=r"CheXpert root folder .*nowhere does not "
        r"exist",
    ):
        ev.read_chexpert_8x200(tmp_path / "nowhere", "a.csv", "b.csv")
    with pytest.raises(FileNotFoundError, match=r"CSV file not found; tried .*a.csv"):
        ev.read_chexpert_8x200(root, "a.csv", "candidates.csv")
    with pytest.raises(ValueError, match=r"uncertain must be 'negative' or 'positive'"):
        ev.read_chexpert_8x200(
            root, "image_queries.csv", "candidates.csv", uncertain="ignore"
        )


# ---- t-SNE -------------------------------------------------------------------------------


def tsne_data(n=45, seed=0):
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 3), int)
    y[: n // 3, 0] = 1
    y[n // 3 : 2 * n // 3, 1] = 1
    y[: n // 6, 1] = 1  # some rows have two findings
    x = rng.standard_normal((n, 10))
    x[:, :3] += 5 * y
    return x, y


def legend_texts(fig):
    return [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]


def test_tsne_multilabel_colours_by_first_positive():
    x, y = tsne_data()
    fig, xy = ev.tsne(
        x,
        y,
        ["Edema", "Fracture", "Pneumonia"],
        perplexity=10,
        threads=1,
        title="ConVIRT",
        return_coordinates=True,
    )
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 1
    assert fig.axes[0].get_title() == "ConVIRT"
    assert xy.shape == (45, 2) and np.all(np.isfinite(xy))
    # 15 Edema (7 also Fracture), 15 Fracture only, 15 with no finding.
    assert sorted(legend_texts(fig)) == ["Edema (15)", "Fracture (15)", "No finding (15)"]
    fig = ev.tsne(
        x,
        y,
        ["Edema", "Fracture", "Pneumonia"],
        perplexity=10,
        threads=1,
        priority=["Fracture"],
    )
    assert sorted(legend_texts(fig)) == ["Edema (8)", "Fracture (22)", "No finding (15)"]


def test_tsne_class_labels_and_determinism():
    x, y = tsne_data()
    classes = y.argmax(axis=1)
    names = ["normal", "edema", "other"]
    _, a = ev.tsne(
        x, classes, names, perplexity=10, threads=1, seed=3, return_coordinates=True
    )
    _, b = ev.tsne(
        x, classes, names, perplexity=10, threads=1, seed=3, return_coordinates=True
    )
    np.testing.assert_array_equal(a, b)


def test_tsne_two_feature_sets_side_by_side():
    x, y = tsne_data()
    rng = np.random.default_rng(1)
    sets = {"random init": rng.standard_normal(x.shape), "ConVIRT": x}
    fig, coordinates = ev.tsne(
        sets, y, ["A", "B", "C"], perplexity=10, threads=1, return_coordinates=True
    )
    assert [ax.get_title() for ax in fig.axes] == ["random init", "ConVIRT"]
    assert set(coordinates) == {"random init", "ConVIRT"}
    fig, axes = plt.subplots(1, 2)
    assert ev.tsne(sets, y, ["A", "B", "C"], perplexity=10, threads=1, ax=axes) is fig


def test_tsne_bad_input():
    x, y = tsne_data()
    bad = x.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match=r"features contains NaN or Inf"):
        ev.tsne(bad, y, perplexity=10, threads=1)
    # "features has 45 rows, expected 44" blamed the features for a short labels
    with pytest.raises(ValueError, match=r"features has 45 rows but labels has 44"):
        ev.tsne(x, y[:44], perplexity=10, threads=1)
    with pytest.raises(ValueError, match=r"perplexity must be in \(0, 45\)"):
        ev.tsne(x, y, perplexity=45)
    with pytest.raises(
        ValueError,
        match=r"priority names \['Edema'\] are not in "
        r"label_names",
    ):
        ev.tsne(x, y, ["A", "B", "C"], perplexity=10, threads=1, priority=["Edema"])
    with pytest.raises(ValueError, match=r"label_names has 2 names for 3 label columns"):
        ev.tsne(x, y, ["A", "B"], perplexity=10, threads=1)
    with pytest.raises(ValueError, match=r"2 feature sets need 2 axes, got 1"):
        ev.tsne({"a": x, "b": x}, y, perplexity=10, threads=1, ax=plt.subplots()[1])
