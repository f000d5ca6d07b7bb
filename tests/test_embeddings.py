"""Features with identifiers: Encoder.encode / embed of a dataset return the ids with the
features, save_embeddings writes one table a DataFrame reads (Parquet or CSV, with the
.npy), and `convirt embed` writes the ids beside the array."""

import os

import numpy as np
import pytest

import convirt
from convirt import cli
from convirt.datasets import ArrayDataset, FolderDataset, synthetic_cxr
from convirt.embeddings import Embeddings, load_embeddings, save_embeddings


def test_encode_a_dataset_returns_its_ids_with_the_features(tiny_towers):
    image, text = tiny_towers
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32), dtype=np.uint8)
    reports = [f"no pleural effusion {i}." for i in range(5)]
    dataset = ArrayDataset(images, reports)
    ids, features = image.encode(dataset)
    assert ids == [f"array[{i}]" for i in range(5)]
    assert np.array_equal(features, image.encode(images))
    result = image.embed(dataset)
    assert isinstance(result, Embeddings) and result.features.shape == (5, 16)
    assert repr(result) == "Embeddings(n=5, dim=16, ids=['array[0]', ...])"
    assert np.array_equal(result.features, image.embed(images))
    ids, features = text.encode(dataset)  # a text tower encodes the reports
    assert np.array_equal(features, text.encode(reports))


def test_encode_resizes_to_image_size(tiny_towers):
    image, _ = tiny_towers
    data = synthetic_cxr(4, size=48, seed=1)
    ids, features = image.encode(data, image_size=32)
    assert ids == ["0", "1", "2", "3"]  # synthetic_cxr has no sources: row numbers
    resized = convirt.eval_augment(32)(data.images, out=np.empty((4, 32, 32), np.float32))
    np.testing.assert_array_equal(features, image.encode(resized))


def test_encode_a_folder_dataset_needs_image_size(tiny_towers, tmp_path):
    from PIL import Image

    image, _ = tiny_towers
    rng = np.random.default_rng(0)
    for name, shape in [("b", (40, 50)), ("a", (36, 36))]:
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
            tmp_path / f"{name}.png"
        )
        (tmp_path / f"{name}.txt").write_text("the lungs are clear.")
    dataset = FolderDataset(str(tmp_path))
    with pytest.raises(ValueError, match="image_size"):
        image.encode(dataset)
    ids, features = image.encode(dataset, image_size=32)
    assert [os.path.basename(i) for i in ids] == ["a.png", "b.png"]
    expected = image.encode(np.stack([dataset.load_image(i, 32) for i in range(2)]))
    np.testing.assert_array_equal(features, expected)


@pytest.fixture
def embeddings():
    rng = np.random.default_rng(3)
    features = (rng.standard_normal((6, 5)) * 10.0 ** rng.integers(-8, 8, (6, 5))).astype(
        np.float32
    )
    return Embeddings([f"img/{i},{i}.png" for i in range(6)], features)  # a comma too


def test_csv_round_trip_is_exact_and_pandas_reads_it(embeddings, tmp_path):
    written = save_embeddings(tmp_path / "f.csv", *embeddings)
    assert written == [str(tmp_path / "f.csv"), str(tmp_path / "f.npy")]
    back = load_embeddings(tmp_path / "f.csv")
    assert back.ids == embeddings.ids
    assert np.array_equal(back.features, embeddings.features)
    assert np.array_equal(np.load(tmp_path / "f.npy"), embeddings.features)
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_csv(tmp_path / "f.csv", index_col="id")
    assert list(frame.index) == embeddings.ids
    assert np.array_equal(frame.to_numpy(np.float32), embeddings.features)
    assert list(frame.columns) == ["f0", "f1", "f2", "f3", "f4"]


def test_npy_output_gets_the_table_beside_it(embeddings, tmp_path, monkeypatch):
    from convirt import embeddings as module

    monkeypatch.setattr(module, "_has_pyarrow", lambda: False)
    written = save_embeddings(tmp_path / "f.npy", *embeddings)
    assert written == [str(tmp_path / "f.npy"), str(tmp_path / "f.csv")]
    back = load_embeddings(tmp_path / "f.npy")
    assert back.ids == embeddings.ids and np.array_equal(back.features, embeddings.features)
    with pytest.raises(ImportError, match="pyarrow"):
        save_embeddings(tmp_path / "g.parquet", *embeddings)


def test_parquet_round_trip(embeddings, tmp_path):
    pytest.importorskip("pyarrow")
    pandas = pytest.importorskip("pandas")
    assert save_embeddings(tmp_path / "f.npy", *embeddings)[1] == str(
        tmp_path / "f.parquet"
    )
    back = load_embeddings(tmp_path / "f.parquet")
    assert back.ids == embeddings.ids and np.array_equal(back.features, embeddings.features)
    frame = pandas.read_parquet(tmp_path / "f.parquet").set_index("id")
    assert np.array_equal(frame.to_numpy(np.float32), embeddings.features)
    assert np.array_equal(embeddings.to_frame().to_numpy(), embeddings.features)


@pytest.mark.parametrize(
    ("path", "ids", "shape", "match"),
    [
        ("f.txt", 2, (2, 3), r"\.parquet, \.csv or \.npy"),
        ("f.csv", 3, (2, 3), "3 ids"),
        ("f.csv", 2, (2,), "shape"),
    ],
)
def test_save_embeddings_refuses_bad_input(tmp_path, path, ids, shape, match):
    with pytest.raises(ValueError, match=match):
        save_embeddings(
            tmp_path / path, [str(i) for i in range(ids)], np.zeros(shape, np.float32)
        )


@pytest.mark.parametrize(
    "text, match",
    [
        ("id,f0,f1\na,1,2\nb,3\n", r"line 3 has 2 fields, the header 3"),
        ("id,f0,f1\na,1,2\nb,3,x\n", r"could not convert"),
    ],
)
def test_load_embeddings_names_the_file_of_a_bad_csv(tmp_path, text, match):
    # A ragged or non-numeric CSV raised NumPy's error without the file's name.
    path = tmp_path / "emb.csv"
    path.write_text(text)
    with pytest.raises(convirt.DataFileError, match=rf"emb\.csv: {match}"):
        load_embeddings(path)


def test_cli_embed_writes_the_ids_beside_the_array(tmp_path, capsys):
    root = tmp_path
    assert cli.main(["synthetic", str(root / "s"), "--n", "6", "--size", "40"]) == 0
    csv = str(root / "s" / "reports.csv")
    assert (
        cli.main(
            ["prepare", "--csv", csv, "--size", "40", str(root / "c"), "--no-progress"]
        )
        == 0
    )
    encoder = convirt.Encoder.resnet18(proj_dim=8, seed=2)
    encoder.save(str(root / "image.safetensors"))
    capsys.readouterr()
    out = str(root / "features.csv")
    argv = ["embed", str(root / "image.safetensors"), str(root / "c"), out, "--no-progress"]
    assert cli.main(argv) == 0
    assert "with the ids" in capsys.readouterr().out
    ids, features = load_embeddings(out)
    bad = ["embed", str(root / "image.safetensors"), str(root / "c"), str(root / "f.txt")]
    assert cli.main(bad) == 1
    assert ".parquet, .csv or .npy" in capsys.readouterr().err
    cache = convirt.prepared.PreparedDataset(str(root / "c"))
    assert ids == cache.sources and ids[0].endswith(".png")
    np.testing.assert_allclose(
        features, encoder.encode(cache.images[:]), rtol=1e-5, atol=1e-6
    )
