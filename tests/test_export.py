"""Export (convirt.export): to_torch matches encode/embed on the same weights, the Hugging
Face-style folder round-trips exactly and is read by transformers, the ONNX graph gives
the same numbers in onnxruntime, and bad folders and missing packages fail clearly."""

import json
import os
import sys

import numpy as np
import pytest

import convirt
from convirt import export
from convirt.errors import CheckpointError

torch = pytest.importorskip("torch")

# float32 bounds: the core and PyTorch sum in different orders (tests/test_resnet.py
# derives its bounds the same way; these networks are small and in eval mode).
RTOL, ATOL = 1e-4, 1e-5


def perturbed(encoder, seed=0):
    """Non-trivial batch-norm statistics and head biases, so every term shows."""
    rng = np.random.default_rng(seed)
    for name, view in encoder.parameters().items():
        if name.endswith("running_var"):
            view[...] = 1 + 0.5 * rng.random(view.shape)
        elif name.endswith(("running_mean", ".bias")):
            view[...] = 0.1 * rng.standard_normal(view.shape)
    return encoder


def images(n=3, size=40, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, size, size) if channels == 1 else (n, size, size, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def as_nchw(x):
    x = x[:, None] if x.ndim == 3 else np.transpose(x, (0, 3, 1, 2))
    return np.ascontiguousarray(x)


@pytest.mark.parametrize(("depth", "channels"), [(18, 1), (34, 3), (50, 1)])
def test_to_torch_resnet_matches_encode_and_embed(depth, channels):
    encoder = perturbed(
        getattr(convirt.Encoder, f"resnet{depth}")(channels, proj_dim=16, proj_hidden=24)
    )
    x = images(channels=channels)
    module = encoder.to_torch()
    assert not module.training
    state = {
        k: v
        for k, v in module.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    expected = encoder.state_dict()
    assert state.keys() == expected.keys()
    assert all(np.array_equal(state[k].numpy(), expected[k]) for k in expected)
    with torch.no_grad():
        features = module(torch.from_numpy(as_nchw(x))).numpy()
        floats = module(torch.from_numpy(as_nchw(x)).float() / 255).numpy()
        embeddings = module.embed(torch.from_numpy(as_nchw(x))).numpy()
    np.testing.assert_allclose(features, encoder.encode(x), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(floats, features, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(embeddings, encoder.embed(x), rtol=RTOL, atol=ATOL)


def test_to_torch_is_a_copy():
    encoder = convirt.Encoder.resnet18(proj_dim=8)
    module = encoder.to_torch()
    before = encoder.parameters()["conv1.weight"].copy()
    with torch.no_grad():
        module.conv1.weight.zero_()
    assert np.array_equal(encoder.parameters()["conv1.weight"], before)


@pytest.mark.parametrize("pooling", ["max", "mean", "cls"])
def test_to_torch_bert_matches_encode_and_embed(pooling, tmp_path):
    pytest.importorskip("transformers")
    import tiny

    _, text = tiny.towers(str(tmp_path / "vocab"))
    text = convirt.Encoder.bert(
        **{
            k: text._spec["config"][k]
            for k in export.bert_config(text)
            if k in text._spec["config"]
        },
        pooling=pooling,
        proj_dim=16,
        proj_hidden=32,
        seed=3,
        tokenizer=text.tokenizer,
        max_length=32,
    )
    perturbed(text)
    reports = tiny.pairs(6)[1]
    module = text.to_torch()
    ids, mask = convirt.text.tokenize(module.tokenizer, reports, max_length=32)
    assert mask.min() == 0  # padding is there, and must not count
    with torch.no_grad():
        features = module(ids, mask).numpy()
        embeddings = module.embed(ids, mask).numpy()
    np.testing.assert_allclose(features, text.encode(reports), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(embeddings, text.embed(reports), rtol=RTOL, atol=ATOL)


def test_to_torch_without_torch_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"needs torch.*pip install"):
        convirt.Encoder.resnet18().to_torch()


# ---- the Hugging Face-style folder ---------------------------------------------------------


def assert_same_encoder(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert np.array_equal(sa[name], sb[name]), name
    assert a.normalization == b.normalization
    assert a.max_length == b.max_length
    assert a._spec == b._spec
    assert (a.tokenizer is None) == (b.tokenizer is None)
    if a.tokenizer is not None:
        assert a.tokenizer.to_str() == b.tokenizer.to_str()


def test_save_pretrained_round_trips_both_towers_exactly(tiny_towers, tmp_path):
    image, text = (perturbed(t) for t in tiny_towers)
    image.normalization = ((0.5,), (0.25,))
    image.save_pretrained(tmp_path / "image")
    text.save_pretrained(tmp_path / "text")
    assert sorted(os.listdir(tmp_path / "image")) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    assert sorted(os.listdir(tmp_path / "text")) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    image2 = convirt.Encoder.from_pretrained(tmp_path / "image")
    text2 = convirt.Encoder.from_pretrained(str(tmp_path / "text"))
    assert_same_encoder(image, image2)
    assert_same_encoder(text, text2)
    x = images()
    assert np.array_equal(image.encode(x), image2.encode(x))
    reports = ["the heart size is normal.", "no pleural effusion."]
    assert np.array_equal(text.embed(reports), text2.embed(reports))


def test_config_json_is_a_bert_config_for_the_text_tower(tiny_towers, tmp_path):
    _, text = tiny_towers
    text.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 2
    assert config["convirt"]["proj_dim"] == 16
    assert config["convirt"]["config"]["freeze_layers"] == 1


def test_transformers_reads_the_text_folder(tiny_towers, tmp_path):
    transformers = pytest.importorskip("transformers")
    _, text = tiny_towers
    perturbed(text)
    text.save_pretrained(tmp_path)
    model = transformers.BertModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    reports = ["the heart size is normal.", "mild left base atelectasis with edema."]
    batch = tokenizer(reports, padding=True, return_tensors="pt")
    ids, _ = convirt.text.tokenize(text.tokenizer, reports, max_length=32)
    assert np.array_equal(batch["input_ids"].numpy(), ids)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    valid = batch["attention_mask"].bool().unsqueeze(-1)
    pooled = hidden.masked_fill(~valid, -torch.inf).amax(1).numpy()
    np.testing.assert_allclose(pooled, text.encode(reports), rtol=RTOL, atol=ATOL)


def test_model_card_shows_training_data_and_evaluation(tmp_path):
    encoder = convirt.Encoder.resnet18(proj_dim=8)
    encoder.save_pretrained(
        tmp_path,
        training={"lr": 3e-4, "epochs": 2},
        data_size="1800 pairs",
        evaluation={"Probe AUC 10%": 0.6512, "T->I P@5": 0.242},
        name="Synthetic CXR encoder",
    )
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: convirt\n")
    assert "# Synthetic CXR encoder" in card
    assert "| lr | 0.0003 |" in card and "| epochs | 2 |" in card
    assert "Data: 1800 pairs." in card
    assert "| Probe AUC 10% | 0.6512 |" in card
    assert "ResNet-18" in card


def test_model_card_evaluation_as_rows_or_frame():
    encoder = convirt.Encoder.resnet18(proj_dim=8)
    rows = [{"method": "ConVIRT", "AUC": 0.7}, {"method": "Random", "AUC": 0.5}]
    card = export.model_card(encoder, evaluation=rows)
    assert "| method | AUC |" in card and "| Random | 0.5 |" in card
    pandas = pytest.importorskip("pandas")
    card = export.model_card(encoder, evaluation=pandas.DataFrame(rows).set_index("method"))
    assert "| ConVIRT | 0.7 |" in card


def test_save_pretrained_reads_a_run(tmp_path, capsys):
    from convirt import cli

    root = tmp_path
    assert cli.main(["synthetic", str(root / "s"), "--n", "24", "--size", "40"]) == 0
    assert (
        cli.main(
            [
                "prepare",
                "--csv",
                str(root / "s" / "reports.csv"),
                "--size",
                "40",
                str(root / "cache"),
                "--no-progress",
            ]
        )
        == 0
    )
    argv = ["pretrain", str(root / "cache"), str(root / "run"), "--image-model",
            "resnet18", "--image-size", "32", "--batch-size", "8", "--proj-dim", "8",
            "--max-length", "16", "--epochs", "1", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    capsys.readouterr()
    summary = export.run_summary(root / "run")
    assert summary["data_size"] == "22 training and 2 validation pairs"
    assert summary["settings"]["image_size"] == 32
    encoder = convirt.Encoder.from_checkpoint(
        os.path.join(summary["checkpoint"], "image_encoder.safetensors")
    )
    encoder.save_pretrained(root / "hf", run=root / "run")
    card = (root / "hf" / "README.md").read_text()
    assert "Data: 22 training and 2 validation pairs." in card
    assert "| image_size | 32 |" in card and "Trained for 1 epoch(s)" in card

    # The same from the command line, with the ONNX graph.
    pytest.importorskip("onnx")
    out = root / "exported"
    assert cli.main(["export", str(root / "run"), str(out), "--onnx"]) == 0
    assert "exported step-" in capsys.readouterr().out
    assert_same_encoder(encoder, convirt.Encoder.from_pretrained(out / "image_encoder"))
    text = convirt.Encoder.from_pretrained(out / "text_encoder")
    assert text.kind == "text" and text.tokenizer is not None
    assert (out / "image_encoder.onnx").exists()
    assert cli.main(["export", str(root / "cache"), str(root / "x")]) == 1
    assert "has no checkpoint" in capsys.readouterr().err


def test_a_plain_bert_folder_still_takes_the_keywords(tiny_towers, tmp_path):
    _, text = tiny_towers
    text.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["convirt"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    plain = convirt.Encoder.from_pretrained(
        tmp_path, pooling="mean", freeze_layers=0, proj_dim=16, proj_hidden=32
    )
    assert "pooling='mean'" in repr(plain) and "freeze_layers=0" in repr(plain)
    assert not export.is_pretrained_folder(tmp_path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c["convirt"].update(proj_dim=7), "proj_dim"),
        (lambda c: c["convirt"].update(kind="vit"), "kind"),
        (lambda c: c["convirt"].update(format="convirt-pretrained-9"), "newer convirt"),
        (lambda c: c["convirt"]["config"].update(depth=34), "depth"),
    ],
)
def test_a_damaged_folder_raises_checkpoint_error(tmp_path, change, match):
    convirt.Encoder.resnet18(proj_dim=8).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    change(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        convirt.Encoder.from_pretrained(tmp_path)


def test_keywords_cannot_change_a_saved_folder(tmp_path):
    convirt.Encoder.resnet18(proj_dim=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="proj_dim, seed cannot change it"):
        convirt.Encoder.from_pretrained(tmp_path, proj_dim=8, seed=1)


def test_a_folder_without_weights_says_so(tmp_path):
    convirt.Encoder.resnet18(proj_dim=8).save_pretrained(tmp_path)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError):
        convirt.Encoder.from_pretrained(tmp_path)


# ---- ONNX ------------------------------------------------------------------------------


def test_onnx_export_matches_in_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    encoder = perturbed(convirt.Encoder.resnet18(3, proj_dim=8))
    path = encoder.to_onnx(tmp_path / "image.onnx", image_size=32)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["features", "embeddings"]
    for n, size in [(2, 32), (5, 48)]:  # other batch sizes and image sizes too
        x = images(n, size, channels=3, seed=n)
        features, embeddings = session.run(
            None, {"images": (as_nchw(x) / np.float32(255)).astype(np.float32)}
        )
        np.testing.assert_allclose(features, encoder.encode(x), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(embeddings, encoder.embed(x), rtol=RTOL, atol=ATOL)


def test_onnx_export_refuses_a_text_encoder(tiny_bert, tmp_path):
    with pytest.raises(TypeError, match="image encoders"):
        tiny_bert.to_onnx(tmp_path / "text.onnx")
