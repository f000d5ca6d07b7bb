"""convirt.evaluation.zero_shot: prompt ensembles and positive/negative pairs computed by
hand, the classes a known embedding space must give, AUC against scikit-learn, the
DataFrame, bad prompts and labels, and `convirt zero-shot` on a trained run."""

import json
import os

import numpy as np
import pytest

import convirt
from convirt import cli
from convirt.evaluation import ZeroShotResult, zero_shot


class WordTower:
    """A stand-in text tower whose embedding of a sentence is the sum of fixed vectors of
    its words (unknown words add nothing): the geometry is known exactly."""

    kind = "text"

    def __init__(self, words):
        self.words = {w: np.asarray(v, np.float32) for w, v in words.items()}
        self.proj_dim = len(next(iter(self.words.values())))

    def embed(self, sentences, batch_size=32, progress=None):
        out = np.zeros((len(sentences), self.proj_dim), np.float32)
        for i, sentence in enumerate(sentences):
            for word in sentence.lower().strip(".").split():
                out[i] += self.words.get(word, 0)
        return out


class RowTower:
    """A stand-in image tower: image i (an (N, 1, 1) array holding i) embeds to row i of
    a fixed matrix."""

    kind = "image"

    def __init__(self, rows):
        self.rows = np.asarray(rows, np.float32)
        self.proj_dim = self.rows.shape[1]

    def embed(self, images, batch_size=32, progress=None):
        return self.rows[np.asarray(images).reshape(len(images)).astype(int)]


E = np.eye(4, dtype=np.float32)
WORDS = {"heart": E[0], "fluid": E[1], "air": E[2], "no": E[3], "big": 0.5 * E[0]}
# Image embeddings: two "heart" images, two "fluid", one "air"; the last is heart and
# fluid together (a multi-label image).
ROWS = [
    [1.0, 0.0, 0.0, 0.1],
    [0.9, 0.0, 0.2, 0.1],
    [0.0, 1.0, 0.0, 0.1],
    [0.0, 0.8, 0.1, 0.3],
    [0.0, 0.0, 1.0, 0.1],
    [0.7, 0.7, 0.0, 0.0],
]
IMAGES = np.arange(len(ROWS)).reshape(-1, 1, 1)


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_multiclass_scores_are_the_softmax_of_cosines_to_the_averaged_prompts():
    text, image = WordTower(WORDS), RowTower(ROWS)
    prompts = {"heart": ["heart", "big heart air"], "fluid": "fluid", "air": ["air"]}
    result = zero_shot(image, text, IMAGES[:5], prompts, temperature=0.2)
    # By hand: each sentence normalised, averaged, normalised again.
    heart = unit(unit(E[0]) + unit(1.5 * E[0] + E[2]))
    classes = np.stack([heart, E[1], E[2]])
    cos = unit(np.asarray(ROWS[:5])) @ classes.T
    expected = np.exp(cos / 0.2) / np.exp(cos / 0.2).sum(1, keepdims=True)
    np.testing.assert_allclose(result.similarity, cos, rtol=1e-6)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-6)
    np.testing.assert_allclose(result.scores.sum(1), 1.0)
    assert result.mode == "multiclass" and result.n_prompts == [2, 1, 1]
    assert result.predictions.tolist() == [0, 0, 1, 1, 2]
    assert result.auc is None and result.accuracy is None


def test_a_prompt_ensemble_can_overturn_a_misleading_sentence():
    # "big air" alone points between heart and air: image 1 (mostly heart, a little
    # air) then goes to "air"; averaged with "heart", the class is heart again.
    text, image = WordTower(WORDS), RowTower(ROWS)
    one = zero_shot(image, text, IMAGES[[1]], {"heart": "fluid no", "air": "big air"})
    both = zero_shot(
        image, text, IMAGES[[1]], {"heart": ["fluid no", "heart"], "air": "big air"}
    )
    assert one.predictions.tolist() == [1]
    assert both.predictions.tolist() == [0]


def test_multiclass_labels_give_accuracy_and_one_vs_rest_auc():
    from sklearn.metrics import roc_auc_score

    text, image = WordTower(WORDS), RowTower(ROWS)
    prompts = {"heart": "heart", "fluid": "fluid", "air": "air"}
    labels = np.array([0, 0, 1, 1, 2])
    result = zero_shot(image, text, IMAGES[:5], prompts, labels)
    assert result.accuracy == 1.0
    np.testing.assert_allclose(result.auc, 1.0)
    # A wrong label lowers both, and the AUC is scikit-learn's.
    wrong = np.array([1, 0, 1, 1, 2])
    result = zero_shot(image, text, IMAGES[:5], prompts, wrong)
    assert result.accuracy == pytest.approx(0.8)
    for k in range(3):
        assert result.auc[k] == pytest.approx(
            roc_auc_score(wrong == k, result.scores[:, k])
        )
    assert result.auc[1] < 1.0
    # One-hot rows are the same labels.
    onehot = np.eye(3, dtype=int)[wrong]
    np.testing.assert_allclose(
        zero_shot(image, text, IMAGES[:5], prompts, onehot).auc, result.auc
    )


def test_positive_negative_pairs_score_each_finding_on_its_own():
    text, image = WordTower(WORDS), RowTower(ROWS)
    prompts = {
        "Cardiomegaly": ("heart", "no"),
        "Effusion": {"positive": ["fluid"], "negative": "no"},
    }
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [1, 1]])
    result = zero_shot(image, text, IMAGES, prompts, labels, temperature=0.1)
    v = unit(np.asarray(ROWS))
    pos, neg = v @ np.stack([E[0], E[1]]).T, v @ np.stack([E[3], E[3]]).T
    np.testing.assert_allclose(
        result.scores, 1 / (1 + np.exp(-(pos - neg) / 0.1)), rtol=1e-6
    )
    assert result.mode == "multilabel"
    # The heart-and-fluid image is positive for both: not a softmax across findings.
    assert (result.predictions == labels).all()
    assert result.scores[5].min() > 0.5
    np.testing.assert_allclose(result.auc, 1.0)
    assert result.mean_auc == 1.0


def test_to_frame_and_repr():
    pytest.importorskip("pandas")
    text, image = WordTower(WORDS), RowTower(ROWS)
    prompts = {"heart": ["heart", "big heart"], "fluid": "fluid", "air": "air"}
    result = zero_shot(image, text, IMAGES[:5], prompts, np.array([0, 0, 1, 1, 2]))
    frame = result.to_frame()
    assert list(frame.index) == ["heart", "fluid", "air"]
    assert list(frame.columns) == ["prompts", "mean_score", "auc"]
    assert frame.loc["heart", "prompts"] == 2
    np.testing.assert_allclose(frame["mean_score"], result.scores.mean(0))
    scores = result.to_frame(per_image=True)
    assert scores.shape == (5, 3)
    np.testing.assert_allclose(scores.to_numpy(), result.scores)
    text_repr = repr(result)
    assert "5 images, 3 classes" in text_repr and "accuracy 1.000" in text_repr
    assert "heart" in result._repr_html_()


@pytest.mark.parametrize(
    "prompts, error, match",
    [
        ({}, TypeError, "non-empty dict"),
        (["a", "b"], TypeError, "non-empty dict"),
        ({"heart": "heart"}, ValueError, "at least 2 classes"),
        ({"heart": [], "air": "air"}, ValueError, "non-empty list"),
        ({"heart": ["heart", ""], "air": "air"}, ValueError, "non-empty strings"),
        ({"heart": "heart", "air": ("air", "no")}, ValueError, "mix the two kinds"),
        ({"heart": ("heart", "no", "big")}, ValueError, "tuple of 3"),
        ({"heart": {"positive": "heart"}}, ValueError, '"positive" and "negative"'),
        ({"heart": {"positive": "heart", "neg": "no"}}, ValueError, "keys"),
    ],
)
def test_bad_prompts(prompts, error, match):
    with pytest.raises(error, match=match):
        zero_shot(RowTower(ROWS), WordTower(WORDS), IMAGES, prompts)


def test_bad_labels_encoders_and_temperature():
    text, image = WordTower(WORDS), RowTower(ROWS)
    prompts = {"heart": "heart", "fluid": "fluid", "air": "air"}
    with pytest.raises(ValueError, match="5 rows but images has 6"):
        zero_shot(image, text, IMAGES, prompts, np.zeros(5, int))
    with pytest.raises(ValueError, match=r"in \[0, 2\]"):
        zero_shot(image, text, IMAGES, prompts, np.array([0, 1, 2, 3, 0, 0]))
    with pytest.raises(TypeError, match="integer class indices"):
        zero_shot(image, text, IMAGES, prompts, np.zeros(6))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        zero_shot(image, text, IMAGES, prompts, np.zeros((6, 2), int))
    with pytest.raises(ValueError, match="must be 0 or 1"):
        zero_shot(image, text, IMAGES, prompts, np.full((6, 3), 2))
    with pytest.raises(TypeError, match="image_encoder must be a convirt image"):
        zero_shot(text, text, IMAGES, prompts)
    with pytest.raises(TypeError, match="text_encoder must be a convirt text"):
        zero_shot(image, image, IMAGES, prompts)
    with pytest.raises(ValueError, match="different sizes"):
        zero_shot(RowTower(np.ones((6, 3))), text, IMAGES, prompts)
    for temperature in (0, -1, "0.1"):
        with pytest.raises(ValueError, match="temperature"):
            zero_shot(image, text, IMAGES, prompts, temperature=temperature)


def test_real_towers_and_image_size(tiny_towers):
    image, text = tiny_towers
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 40, 40), dtype=np.uint8)
    prompts = {"A": ["the heart size is normal.", "no fracture is seen."], "B": "effusion"}
    result = zero_shot(image, text, images, prompts, image_size=32)
    views = convirt.eval_augment(32)(images, out=np.empty((6, 32, 32), np.float32))
    v = unit(image.embed(views))
    u = unit(text.embed(["the heart size is normal.", "no fracture is seen.", "effusion"]))
    classes = unit(np.stack([unit(u[0] + 0) + unit(u[1]), u[2]]))
    np.testing.assert_allclose(result.similarity, v @ classes.T, rtol=1e-4, atol=1e-6)
    assert isinstance(result, ZeroShotResult)
    assert convirt.eval.zero_shot is zero_shot


# ---- the command line ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run directory of `convirt pretrain` (tiny settings) and its prepared cache, with
    labels beside the cache."""
    root = tmp_path_factory.mktemp("zs")
    assert cli.main(["synthetic", str(root / "s"), "--n", "24", "--size", "40"]) == 0
    assert (
        cli.main(
            ["prepare", "--csv", str(root / "s" / "reports.csv"), "--size", "40"]
            + [str(root / "cache"), "--no-progress"]
        )
        == 0
    )
    argv = ["pretrain", str(root / "cache"), str(root / "run"), "--epochs", "1"]
    argv += ["--image-model", "resnet18", "--image-size", "32", "--batch-size", "8"]
    argv += ["--proj-dim", "16", "--max-length", "24", "--no-progress", "--threads", "2"]
    assert cli.main(argv) == 0
    return root


def test_cli_zero_shot_refuses_prompts_without_a_class(tmp_path, capsys):
    # --prompts holding {} went on to a TypeError traceback on an unlabelled cache.
    (tmp_path / "p.json").write_text("{}")
    argv = ["zero-shot", "--run", str(tmp_path / "run"), "--prompts"]
    assert cli.main(argv + [str(tmp_path / "p.json"), str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert "p.json names no class; expected a JSON object" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_zero_shot_matches_the_library(trained_run, tmp_path, capsys):
    from convirt.checkpoint import CheckpointDir
    from convirt.prepared import PreparedDataset

    prompts = {
        "Cardiomegaly": ["The heart is enlarged.", "Cardiomegaly."],
        "Pleural Effusion": "There is a pleural effusion.",
        "No Finding": "No acute cardiopulmonary process.",
    }
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    out = tmp_path / "scores.csv"
    argv = ["zero-shot", "--run", str(trained_run / "run"), "--prompts"]
    argv += [str(tmp_path / "p.json"), str(trained_run / "cache"), "--output", str(out)]
    assert cli.main(argv + ["--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Cardiomegaly" in printed and "24 images, 3 classes" in printed
    rows = out.read_text().splitlines()
    assert rows[0] == "image,Cardiomegaly,Pleural Effusion,No Finding" and len(rows) == 25
    scores = np.array([[float(x) for x in r.split(",")[1:]] for r in rows[1:]])

    directory = CheckpointDir(str(trained_run / "run" / "checkpoint")).pointer("BEST")
    image = convirt.Encoder.from_checkpoint(
        os.path.join(directory, "image_encoder.safetensors")
    )
    text = convirt.Encoder.from_checkpoint(
        os.path.join(directory, "text_encoder.safetensors")
    )
    images = PreparedDataset(str(trained_run / "cache")).images
    expected = zero_shot(image, text, images, prompts, image_size=32)
    np.testing.assert_allclose(scores, expected.scores, rtol=1e-5, atol=1e-6)


def test_cli_zero_shot_pairs_and_errors(trained_run, tmp_path, capsys):
    pairs = {"Edema": {"positive": "There is edema.", "negative": "There is no edema."}}
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    argv = ["zero-shot", "--run", str(trained_run / "run"), "--prompts"]
    base = argv + [
        str(tmp_path / "pairs.json"),
        str(trained_run / "cache"),
        "--no-progress",
    ]
    assert cli.main(base) == 0
    assert "positive vs negative" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{not json")
    bad = ["zero-shot", "--run", str(trained_run / "run"), "--prompts"]
    assert cli.main(bad + [str(tmp_path / "bad.json"), str(trained_run / "cache")]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    assert (
        cli.main(
            ["zero-shot", "--run", str(tmp_path), "--prompts"]
            + [str(tmp_path / "pairs.json"), str(trained_run / "cache")]
        )
        == 1
    )
    assert "has no checkpoint" in capsys.readouterr().err
