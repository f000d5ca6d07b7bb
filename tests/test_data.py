"""convirt.data: image decoding (Pillow, DICOM), report sections, the four dataset
sources, the prepared memmap cache (resume, crash safety, bad inputs) and the
BatchLoader (determinism, prefetch thread)."""

import csv
import gzip
import io
import json
import os
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image
from tiny import MIMIC_REPORT, gradient_image

from convirt import data
from convirt.data import (
    ArrayDataset,
    BatchLoader,
    CSVDataset,
    FolderDataset,
    ImageDecodeError,
    MIMICCXRDataset,
    PreparedDataset,
    decode_image,
    extract_sections,
    impressions,
    prepare,
    resize_center_crop,
    split_sentences,
)
from convirt.errors import StateError


def reference_resize(image, size):
    """Shorter side to size, centre crop, written the long way with Pillow: resize
    the whole image first, then crop (the tested code resizes a box in one step)."""
    height, width = image.shape
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = np.asarray(
        Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


# --------------------------------------------------------------------------------------
# Pillow decoding
# --------------------------------------------------------------------------------------


def test_png_8bit_roundtrip(tmp_path):
    image = gradient_image(40, 60)
    Image.fromarray(image).save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (40, 60)
    np.testing.assert_array_equal(out, image)


def test_rgb_png_becomes_luma(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    out = decode_image(tmp_path / "c.png")
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    assert out.shape == (20, 30)
    assert np.abs(out.astype(float) - luma).max() <= 1.0


def test_rgba_and_palette_png(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert abs(int(decode_image(tmp_path / "a.png")[0, 0]) - round(200 * 0.299)) <= 1
    Image.fromarray(gradient_image(10, 12)).convert("P").save(tmp_path / "p.png")
    assert decode_image(tmp_path / "p.png").shape == (10, 12)


def test_png_16bit_scaled_min_max(tmp_path):
    rng = np.random.default_rng(2)
    deep = rng.integers(1000, 4096, (32, 48)).astype(np.uint16)  # 12-bit data in 16 bits
    Image.fromarray(deep).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = decode_image(tmp_path / "d.png")
    low, high = deep.min(), deep.max()
    expected = np.rint((deep.astype(float) - low) * 255 / (high - low))
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert out.min() == 0 and out.max() == 255


def test_png_16bit_constant_image_is_zero(tmp_path):
    Image.fromarray(np.full((8, 8), 777, np.uint16)).save(tmp_path / "c.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "c.png"), 0)


def test_jpeg_decodes_close_to_source(tmp_path):
    image = gradient_image(64, 80)
    Image.fromarray(image).save(tmp_path / "a.jpg", quality=95)
    out = decode_image(tmp_path / "a.jpg")
    assert out.shape == (64, 80)
    assert np.abs(out.astype(float) - image).mean() < 3


def test_color_jpeg_becomes_gray(tmp_path):
    rgb = np.stack([gradient_image(40, 40, s) for s in range(3)], axis=2)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    out = decode_image(tmp_path / "c.jpg")
    assert out.shape == (40, 40) and out.dtype == np.uint8


def test_size_resizes_shorter_side_and_crops_centre(tmp_path):
    image = gradient_image(90, 150)
    Image.fromarray(image).save(tmp_path / "w.png")
    out = decode_image(tmp_path / "w.png", size=30)
    assert out.shape == (30, 30)
    expected = reference_resize(image, 30)
    assert np.abs(out.astype(float) - expected).mean() < 4


def test_centre_crop_drops_the_sides():
    image = np.full((50, 150), 128, np.uint8)
    image[:, :50] = 0
    image[:, 100:] = 255
    out = resize_center_crop(image, 20)
    assert out.shape == (20, 20)
    # Inside the crop only the middle third shows; the outermost columns blend a little
    # with their neighbours, as they would if the whole image were resized first.
    assert np.abs(out[:, 1:-1].astype(int) - 128).max() <= 1
    np.testing.assert_allclose(out, reference_resize(image, 20), atol=2)


def test_resize_upscales_small_images():
    out = resize_center_crop(gradient_image(10, 14), 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8


def test_resize_rejects_wrong_dtype_and_size():
    with pytest.raises(TypeError, match="uint8"):
        resize_center_crop(np.zeros((4, 4), np.float32), 2)
    with pytest.raises(TypeError, match=r"\(H, W\)"):
        resize_center_crop(np.zeros((4, 4, 3), np.uint8), 2)
    with pytest.raises(ValueError, match="positive integer"):
        resize_center_crop(np.zeros((4, 4), np.uint8), 0)


def test_large_jpeg_draft_matches_full_decode(tmp_path):
    image = gradient_image(1200, 1000)
    Image.fromarray(image).save(tmp_path / "big.jpg", quality=92)
    fast = decode_image(tmp_path / "big.jpg", size=64)
    full = resize_center_crop(decode_image(tmp_path / "big.jpg"), 64)
    assert fast.shape == (64, 64)
    assert np.abs(fast.astype(float) - full).mean() < 3


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        decode_image(tmp_path / "nope.png")


@pytest.mark.parametrize(
    "content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10]
)
def test_corrupt_file(tmp_path, content):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        decode_image(tmp_path / "bad.png")


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(gradient_image(64, 64)).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageDecodeError):
        decode_image(tmp_path / "cut.jpg")


def test_directory_is_not_an_image(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageDecodeError, match="directory"):
        decode_image(tmp_path / "dir.png")


def test_decode_rejects_bad_size(tmp_path):
    Image.fromarray(gradient_image(8, 8)).save(tmp_path / "a.png")
    for size in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="size"):
            decode_image(tmp_path / "a.png", size=size)


# --------------------------------------------------------------------------------------
# DICOM decoding
# --------------------------------------------------------------------------------------

try:
    import pydicom
except ImportError:  # the optional extra: only the DICOM tests are skipped
    pydicom = None
needs_pydicom = pytest.mark.skipif(
    pydicom is None, reason="pydicom is not installed (pip install 'convirt[dicom]')"
)


def write_dicom(path, pixels, photometric="MONOCHROME2", **attributes):
    """A minimal secondary-capture DICOM file holding ``pixels`` (uint16/int16/uint8)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def rg1(name):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available (pip install pydicom-data)")
    return path


@needs_pydicom
def test_real_chest_radiograph_rg1():
    """RG1_UNCR: a real PA chest film, MONOCHROME1, 15 bits stored, window 15000/30000.
    Reference: pydicom's own modality + VOI functions, scaled from the 15-bit output
    range to 0-255, then inverted for MONOCHROME1."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = rg1("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    out = decode_image(path)
    assert out.dtype == np.uint8 and out.shape == (ds.Rows, ds.Columns)
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    reference = 255 - np.rint(windowed / (2**ds.BitsStored - 1) * 255)
    assert np.abs(out.astype(float) - reference).max() <= 1
    # Displayed the right way round: the mediastinum (centre columns) is brighter than
    # the lungs on either side, and air outside the body at the top corners is dark.
    rows = slice(int(0.3 * ds.Rows), int(0.6 * ds.Rows))
    centre = out[rows, int(0.46 * ds.Columns) : int(0.54 * ds.Columns)].mean()
    lungs = (
        out[rows, int(0.2 * ds.Columns) : int(0.3 * ds.Columns)].mean()
        + out[rows, int(0.7 * ds.Columns) : int(0.8 * ds.Columns)].mean()
    ) / 2
    assert centre > lungs + 20


@needs_pydicom
def test_real_chest_radiograph_jpeg2000_matches_uncompressed():
    try:
        from pydicom.pixels import get_decoder
        from pydicom.uid import JPEG2000Lossless

        if not get_decoder(JPEG2000Lossless).is_available:
            pytest.skip("no JPEG 2000 decoder (pip install pylibjpeg pylibjpeg-openjpeg)")
    except ImportError:
        pass
    compressed = decode_image(rg1("RG1_J2KR.dcm"), size=128)
    plain = decode_image(rg1("RG1_UNCR.dcm"), size=128)
    np.testing.assert_array_equal(compressed, plain)


@needs_pydicom
def test_monochrome1_without_window_is_min_max_inverted(tmp_path):
    pixels = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 30 + 500
    path = write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")
    out = decode_image(path)
    expected = 255 - np.rint((pixels - 500.0) * 255 / (pixels.max() - 500.0))
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert out.flat[0] == 255 and out.flat[-1] == 0  # lowest value shown white


@needs_pydicom
def test_monochrome1_versus_monochrome2_are_inverses(tmp_path):
    pixels = (np.random.default_rng(3).random((16, 16)) * 4000).astype(np.uint16)
    one = decode_image(write_dicom(tmp_path / "1.dcm", pixels, photometric="MONOCHROME1"))
    two = decode_image(write_dicom(tmp_path / "2.dcm", pixels, photometric="MONOCHROME2"))
    np.testing.assert_array_equal(one.astype(int), 255 - two.astype(int))


@needs_pydicom
def test_rescale_slope_intercept_and_window(tmp_path):
    """CT-like numbers: stored s, value = 2 s - 1024 HU, window 40/400 (soft tissue).
    Expected from the DICOM LINEAR window formula written out here."""
    stored = np.linspace(300, 900, 20 * 20).astype(np.uint16).reshape(20, 20)
    path = write_dicom(
        tmp_path / "ct.dcm",
        stored,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=400,
    )
    out = decode_image(path)
    hu = stored * 2.0 - 1024
    low, high = 40 - 0.5 - (400 - 1) / 2, 40 - 0.5 + (400 - 1) / 2
    expected = np.where(
        hu <= low, 0, np.where(hu > high, 255, ((hu - 39.5) / 399 + 0.5) * 255)
    )
    assert np.abs(out.astype(float) - np.rint(expected)).max() <= 1
    # Without the rescale the same window would clip everything to white: slope and
    # intercept were applied.
    assert out.min() == 0 and out.max() == 255 and 0 < np.median(out) < 255


@needs_pydicom
def test_signed_pixels_with_intercept(tmp_path):
    stored = np.arange(-50, 50, dtype=np.int16).reshape(10, 10)
    out = decode_image(
        write_dicom(tmp_path / "s.dcm", stored, RescaleSlope=1, RescaleIntercept=100)
    )
    expected = np.rint((stored + 50.0) * 255 / 99)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))


@needs_pydicom
def test_unusable_window_falls_back_to_min_max(tmp_path):
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 10
    out = decode_image(
        write_dicom(tmp_path / "w.dcm", pixels, WindowCenter=100, WindowWidth=0)
    )
    assert out.min() == 0 and out.max() == 255


@needs_pydicom
def test_dicom_recognised_without_suffix_and_resized(tmp_path):
    pixels = (np.random.default_rng(4).random((40, 60)) * 1000).astype(np.uint16)
    path = write_dicom(tmp_path / "image.bin", pixels)
    out = decode_image(path, size=20)
    assert out.shape == (20, 20)


@needs_pydicom
def test_dicom_without_pixels_is_corrupt(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(str(path))
    with pytest.raises(ImageDecodeError, match="no pixel data"):
        decode_image(path)


@needs_pydicom
def test_garbage_with_dcm_suffix_is_corrupt(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(ImageDecodeError, match="DICOM"):
        decode_image(tmp_path / "x.dcm")


@needs_pydicom
def test_truncated_dicom_pixels_are_corrupt(tmp_path):
    path = write_dicom(tmp_path / "t.dcm", np.zeros((64, 64), np.uint16))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 4000])
    with pytest.raises(ImageDecodeError):
        decode_image(path)


@needs_pydicom
def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    import sys

    path = write_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"convirt\[dicom\]"):
        decode_image(path)


# --------------------------------------------------------------------------------------
# Report sections and sentences
# --------------------------------------------------------------------------------------


def test_extract_sections_mimic_report():
    sections = extract_sections(MIMIC_REPORT)
    assert sections["findings"] == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral "
        "nodular opacities that most likely represent nipple shadows. The "
        "cardiomediastinal silhouette is normal."
    )
    assert sections["impression"] == "No acute cardiopulmonary process."


@pytest.mark.parametrize(
    "text, findings, impression",
    [
        ("Findings: Lungs clear.\nImpression: Normal.", "Lungs clear.", "Normal."),
        (
            "FINDING: Small effusion.\nIMPRESSIONS: Effusion.",
            "Small effusion.",
            "Effusion.",
        ),
        ("FINDINGS AND IMPRESSION: Mild cardiomegaly.", "Mild cardiomegaly.", ""),
        (
            "findings:   Clear.\n\nCONCLUSION: No acute process.",
            "Clear.",
            "No acute process.",
        ),
        ("IMPRESSION - Pneumonia.\nRECOMMENDATION(S): Follow up.", "", "Pneumonia."),
        (
            "INDICATION: cough\nFINDINGS: Clear lungs.\nNOTIFICATION: called Dr. ___.",
            "Clear lungs.",
            "",
        ),
    ],
)
def test_extract_sections_heading_variants(text, findings, impression):
    sections = extract_sections(text)
    assert sections == {"findings": findings, "impression": impression}


def test_extract_sections_falls_back_to_last_paragraph():
    text = "EXAMINATION: chest\n\nHISTORY: cough\n\nThe lungs are clear.\nNo effusion.\n"
    assert extract_sections(text) == {
        "findings": "",
        "impression": "The lungs are clear. No effusion.",
    }
    assert extract_sections("") == {"findings": "", "impression": ""}
    assert extract_sections(None) == {"findings": "", "impression": ""}


def test_format_sections():
    assert (
        data.format_sections({"findings": "A.", "impression": "B."})
        == "FINDINGS: A.\nIMPRESSION: B."
    )
    assert data.format_sections({"findings": "", "impression": "B."}) == "IMPRESSION: B."


def test_split_sentences():
    report = (
        "FINDINGS: Heart size is normal. No effusion.\nIMPRESSION: 1. No ___ change. "
        "2. Stable."
    )
    assert split_sentences(report) == [
        "Heart size is normal.",
        "No effusion.",
        "No ___ change.",
        "Stable.",
    ]
    assert split_sentences("") == []
    assert split_sentences("FINDINGS:\nIMPRESSION:") == []


# --------------------------------------------------------------------------------------
# Dataset sources
# --------------------------------------------------------------------------------------


def test_array_dataset():
    images = np.stack([gradient_image(20, 30, s) for s in range(4)])
    dataset = ArrayDataset(
        images,
        ["a", "b", "c", "d"],
        labels=[[1, 0], [0, 1], [1, 1], [0, 0]],
        label_names=["x", "y"],
    )
    assert len(dataset) == 4 and dataset.images is images
    image, report = dataset[2]
    assert np.shares_memory(image, images) and report == "c"
    assert dataset[-1][1] == "d"
    assert dataset.labels.dtype == np.float32 and dataset.label_names == ["x", "y"]
    assert dataset.sources == ["array[0]", "array[1]", "array[2]", "array[3]"]
    assert dataset.load_image(1, size=10).shape == (10, 10)
    assert "ArrayDataset(n=4" in repr(dataset)


def test_array_dataset_of_different_sizes():
    dataset = ArrayDataset([gradient_image(10, 12), gradient_image(30, 20)], ["a", "b"])
    assert dataset[1][0].shape == (30, 20)
    assert dataset.load_image(1, size=8).shape == (8, 8)


def test_array_dataset_rejects_bad_inputs():
    good = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        ArrayDataset(good.astype(np.float32), ["a", "b"])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        ArrayDataset(np.zeros((2, 4, 4, 3), np.uint8), ["a", "b"])
    with pytest.raises(ValueError, match="2 images but 3 reports"):
        ArrayDataset(good, ["a", "b", "c"])
    with pytest.raises(TypeError, match="list of strings"):
        ArrayDataset(good, "ab")
    with pytest.raises(TypeError, match=r"reports\[1\] must be a str"):
        ArrayDataset(good, ["a", 3])
    with pytest.raises(TypeError, match=r"images\[1\]"):
        ArrayDataset([good[0], good[1].astype(np.int16)], ["a", "b"])
    with pytest.raises(ValueError, match="labels must have shape"):
        ArrayDataset(good, ["a", "b"], labels=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="label_names"):
        ArrayDataset(good, ["a", "b"], labels=np.zeros((2, 2)), label_names=["x"])
    dataset = ArrayDataset(good, ["a", "b"])
    with pytest.raises(IndexError, match="out of range"):
        dataset[2]
    with pytest.raises(TypeError, match="integer"):
        dataset["0"]


def write_pngs(folder, count, size=(24, 32)):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k in range(count):
        path = os.path.join(folder, f"img{k}.png")
        Image.fromarray(gradient_image(*size, seed=k)).save(path)
        paths.append(path)
    return paths


def write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_dataset_comma_relative_paths_and_quoted_reports(tmp_path):
    write_pngs(tmp_path / "imgs", 3)
    rows = [
        ["imgs/img0.png", "Heart normal, lungs clear."],
        ["imgs/img1.png", "Line one.\nLine two, with comma."],
        [str(tmp_path / "imgs" / "img2.png"), "Absolute path."],
    ]
    path = write_csv(tmp_path / "pairs.csv", ["path", "text"], rows)
    dataset = CSVDataset(path, image_column="path", report_column="text")
    assert len(dataset) == 3
    assert dataset.reports[1] == "Line one.\nLine two, with comma."
    assert dataset.sources[0] == str(tmp_path / "imgs" / "img0.png")
    assert dataset.sources[2] == str(tmp_path / "imgs" / "img2.png")
    image, report = dataset[0]
    assert image.shape == (24, 32) and report == "Heart normal, lungs clear."


def test_csv_dataset_tab_detected_and_root(tmp_path):
    write_pngs(tmp_path / "elsewhere", 2)
    os.makedirs(tmp_path / "tables")
    path = write_csv(
        tmp_path / "tables" / "pairs.tsv",
        ["image", "report", "note"],
        [["img0.png", "A, b, c.", "x"], ["img1.png", "D.", "y"]],
        delimiter="\t",
    )
    dataset = CSVDataset(path, root=tmp_path / "elsewhere")
    assert dataset.reports == ["A, b, c.", "D."]
    assert dataset[1][0].shape == (24, 32)


def test_csv_dataset_gzip_and_bom(tmp_path):
    write_pngs(tmp_path, 1)
    content = "\ufeffimage,report\nimg0.png,Clear.\n".encode("utf-8")
    with gzip.open(tmp_path / "pairs.csv.gz", "wb") as f:
        f.write(content)
    dataset = CSVDataset(tmp_path / "pairs.csv.gz")
    assert dataset.reports == ["Clear."] and dataset[0][0].shape == (24, 32)


def test_csv_dataset_labels(tmp_path):
    path = write_csv(
        tmp_path / "p.csv",
        ["image", "report", "Edema", "Fracture"],
        [["a.png", "x", "1", ""], ["b.png", "y", "0", "-1"]],
    )
    dataset = CSVDataset(path, label_columns=["Edema", "Fracture"])
    assert dataset.label_names == ["Edema", "Fracture"]
    np.testing.assert_array_equal(dataset.labels, [[1, np.nan], [0, -1]])


def test_csv_dataset_wrong_column_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["path", "findings"], [["a.png", "x"]])
    with pytest.raises(
        ValueError,
        match=r"image column 'image' not found.*columns found: "
        r"'path', 'findings'",
    ):
        CSVDataset(path)
    with pytest.raises(ValueError, match=r"report column 'report' not found.*'findings'"):
        CSVDataset(path, image_column="path")
    with pytest.raises(ValueError, match=r"label column 'Edema' not found"):
        CSVDataset(
            path, image_column="path", report_column="findings", label_columns=["Edema"]
        )


def test_csv_dataset_tab_file_wrong_column_shows_split_columns(tmp_path):
    path = write_csv(tmp_path / "p.tsv", ["path", "text"], [["a.png", "x"]], delimiter="\t")
    with pytest.raises(ValueError, match=r"columns found: 'path', 'text'"):
        CSVDataset(path)


def test_csv_dataset_bad_label_value(tmp_path):
    path = write_csv(
        tmp_path / "p.csv", ["image", "report", "Edema"], [["a.png", "x", "yes"]]
    )
    with pytest.raises(ValueError, match=r"line 2.*'Edema' holds 'yes'"):
        CSVDataset(path, label_columns=["Edema"])


def test_csv_dataset_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        CSVDataset(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match="CSV file not found"):
        CSVDataset(tmp_path / "nope.csv")


def test_csv_dataset_empty_image_path_is_missing(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["image", "report"], [["", "x"], ["", "y"]])
    dataset = CSVDataset(path)
    assert len(set(dataset.sources)) == 2
    with pytest.raises(FileNotFoundError, match="empty image path on line 2"):
        dataset[0]


def test_folder_dataset(tmp_path):
    write_pngs(tmp_path / "a", 2)
    write_pngs(tmp_path / "a" / "nested", 1)
    for path in [
        tmp_path / "a" / "img0.txt",
        tmp_path / "a" / "img1.txt",
        tmp_path / "a" / "nested" / "img0.txt",
    ]:
        path.write_text(f"Report of {path.stem}.\n")
    (tmp_path / "a" / "notes.md").write_text("not an image")
    dataset = FolderDataset(tmp_path / "a")
    assert len(dataset) == 3
    assert dataset.reports[0] == "Report of img0."
    assert dataset.sources[2].endswith(os.path.join("nested", "img0.png"))
    assert dataset[1][0].shape == (24, 32)


def test_folder_dataset_missing_reports(tmp_path):
    write_pngs(tmp_path, 3)
    (tmp_path / "img1.txt").write_text("Only one report.")
    with pytest.raises(ValueError, match="2 of 3 images .* no .txt report"):
        FolderDataset(tmp_path)
    with pytest.warns(UserWarning, match="2 of 3 images"):
        dataset = FolderDataset(tmp_path, missing_reports="skip")
    assert len(dataset) == 1 and len(dataset.skipped) == 2
    with pytest.raises(ValueError, match="missing_reports"):
        FolderDataset(tmp_path, missing_reports="ignore")
    with pytest.raises(FileNotFoundError):
        FolderDataset(tmp_path / "nope")


def test_mimic_frontal_train_split(mimic_tree):
    root = mimic_tree
    dataset = MIMICCXRDataset(root)
    names = [os.path.basename(s) for s in dataset.sources]
    assert names == ["d1.jpg", "d3.jpg", "d7.jpg"]  # frontal views of the train split
    assert dataset.sources[0] == os.path.join(
        root, "files", "p10", "p10000032", "s50414267", "d1.jpg"
    )
    assert dataset.reports[0] == (
        "FINDINGS: There is no focal consolidation, pleural effusion or pneumothorax. "
        "Bilateral nodular opacities that most likely represent nipple shadows. The "
        "cardiomediastinal silhouette is normal.\n"
        "IMPRESSION: No acute cardiopulmonary process."
    )
    assert dataset.reports[1] == "FINDINGS: Mild cardiomegaly.\nIMPRESSION: Cardiomegaly."
    # A report found under mimic-cxr-reports/, written as combined findings+impression.
    assert dataset.reports[2] == "FINDINGS: Small left pleural effusion."
    assert dataset.study_ids == ["50414267", "53189527", "57375967"]
    assert dataset.label_names == ["Cardiomegaly", "Pleural Effusion"]
    np.testing.assert_array_equal(dataset.labels, [[np.nan, 0], [1, np.nan], [-1, 1]])
    assert dataset[0][0].shape == (40, 30)


@pytest.mark.parametrize("mimic_tree", [False], ids=["plain_csv"], indirect=True)
def test_mimic_splits_views_and_missing_reports(mimic_tree):
    root = mimic_tree
    val = MIMICCXRDataset(root, split="val")
    assert [os.path.basename(s) for s in val.sources] == ["d4.jpg"]
    assert val.reports == [""] and val.missing_reports == 1
    test = MIMICCXRDataset(root, split="test", views=None)
    assert [os.path.basename(s) for s in test.sources] == ["d6.jpg"]
    everything = MIMICCXRDataset(root, split=None, views=None)
    assert len(everything) == 7
    lateral = MIMICCXRDataset(root, split=None, views=["lateral", "LL"])
    assert [os.path.basename(s) for s in lateral.sources] == ["d2.jpg", "d5.jpg"]
    impression_only = MIMICCXRDataset(root, sections=("impression",))
    assert impression_only.reports[0] == "IMPRESSION: No acute cardiopulmonary process."


def test_mimic_errors(tmp_path, mimic_tree):
    with pytest.raises(FileNotFoundError, match="MIMIC-CXR-JPG folder not found"):
        MIMICCXRDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="metadata"):
        MIMICCXRDataset(tmp_path / "empty")
    root = mimic_tree
    with pytest.raises(ValueError, match="split must be"):
        MIMICCXRDataset(root, split="dev")
    with pytest.raises(ValueError, match="sections"):
        MIMICCXRDataset(root, sections=("history",))


def test_mimic_prepare_end_to_end(tmp_path, mimic_tree):
    root = mimic_tree
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing should be skipped
        summary = prepare(
            MIMICCXRDataset(root), tmp_path / "cache", size=16, progress=False
        )
    assert summary.prepared == 3 and summary.skipped == 0
    cache = PreparedDataset(tmp_path / "cache")
    assert cache.images.shape == (3, 16, 16)
    assert cache.label_names == ["Cardiomegaly", "Pleural Effusion"]
    np.testing.assert_array_equal(cache.labels, [[np.nan, 0], [1, np.nan], [-1, 1]])


# --------------------------------------------------------------------------------------
# prepare and PreparedDataset
# --------------------------------------------------------------------------------------


class CountingDataset(data.PairedDataset):
    """Wraps a dataset, counts load_image calls, and can interrupt at a given call."""

    def __init__(self, inner, interrupt_at=None):
        self.inner = inner
        self.reports = inner.reports
        self.sources = inner.sources
        self.labels = inner.labels
        self.label_names = inner.label_names
        self.loaded = []
        self.interrupt_at = interrupt_at
        self.lock = threading.Lock()

    def _load(self, index, size):
        with self.lock:
            if self.interrupt_at is not None and len(self.loaded) >= self.interrupt_at:
                raise KeyboardInterrupt
            self.loaded.append(index)
        return self.inner._load(index, size)


def array_dataset(count=10, labels=True, seed=0):
    images = np.stack([gradient_image(30, 40, seed + k) for k in range(count)])
    reports = [f"FINDINGS: Report {k}.\nIMPRESSION: Fine." for k in range(count)]
    label_values = (
        np.random.default_rng(seed).integers(0, 2, (count, 3)) if labels else None
    )
    return ArrayDataset(
        images,
        reports,
        labels=label_values,
        label_names=["a", "b", "c"] if labels else None,
    )


def test_prepare_and_read_in_place(tmp_path):
    dataset = array_dataset(6)
    summary = prepare(dataset, tmp_path / "c", size=20, progress=False)
    assert (summary.total, summary.prepared, summary.new, summary.kept) == (6, 6, 6, 0)
    assert "6 of 6 pairs prepared" in str(summary)
    cache = PreparedDataset(tmp_path / "c")
    assert isinstance(cache.images, np.memmap) and cache.images.dtype == np.uint8
    assert cache.images.shape == (6, 20, 20) and len(cache) == 6 and cache.size == 20
    assert not cache.images.flags.writeable
    for k in range(6):
        np.testing.assert_array_equal(
            cache.images[k], resize_center_crop(dataset.images[k], 20)
        )
        image, report = cache[k]
        assert report == dataset.reports[k] and np.shares_memory(image, cache.images)
    np.testing.assert_array_equal(cache.labels, dataset.labels)
    assert cache.label_names == ["a", "b", "c"]
    assert cache.sources == dataset.sources
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert index["complete"] and index["rows"] == 6 and index["size"] == 20
    assert [e["status"] for e in index["entries"]] == ["ok"] * 6
    assert os.path.getsize(tmp_path / "c" / "images.u8") == 6 * 20 * 20
    assert "PreparedDataset" in repr(cache)


def test_prepare_without_labels_and_empty_dataset(tmp_path):
    prepare(array_dataset(3, labels=False), tmp_path / "a", size=8, progress=False)
    assert PreparedDataset(tmp_path / "a").labels is None
    empty = ArrayDataset(np.zeros((0, 5, 5), np.uint8), [])
    summary = prepare(empty, tmp_path / "b", size=8, progress=False)
    assert summary.prepared == 0
    cache = PreparedDataset(tmp_path / "b")
    assert len(cache) == 0 and cache.images.shape == (0, 8, 8)


def test_prepare_resume_keeps_done_entries(tmp_path):
    first = CountingDataset(array_dataset(8))
    prepare(first, tmp_path / "c", size=16, progress=False)
    assert sorted(first.loaded) == list(range(8))
    again = CountingDataset(array_dataset(8))
    summary = prepare(again, tmp_path / "c", size=16, progress=False)
    assert again.loaded == [] and summary.kept == 8 and summary.new == 0


def test_prepare_interrupted_then_resumed(tmp_path):
    dataset = array_dataset(12)
    crashing = CountingDataset(dataset, interrupt_at=5)
    with pytest.raises(KeyboardInterrupt):
        prepare(
            crashing,
            tmp_path / "c",
            size=16,
            progress=False,
            workers=1,
            checkpoint_seconds=0,
        )
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert not index["complete"] and index["rows"] == 5
    assert index["counts"] == {"ok": 5, "pending": 7}
    with pytest.raises(ValueError, match="incomplete"):
        PreparedDataset(tmp_path / "c")
    partial = PreparedDataset(tmp_path / "c", allow_incomplete=True)
    assert len(partial) == 5

    resumed = CountingDataset(dataset)
    summary = prepare(resumed, tmp_path / "c", size=16, progress=False, workers=2)
    assert sorted(resumed.loaded) == list(range(5, 12))
    assert (summary.kept, summary.new, summary.prepared) == (5, 7, 12)
    prepare(dataset, tmp_path / "fresh", size=16, progress=False)
    a, b = PreparedDataset(tmp_path / "c"), PreparedDataset(tmp_path / "fresh")
    np.testing.assert_array_equal(a.images, b.images)
    assert a.reports == b.reports and a.sources == b.sources
    np.testing.assert_array_equal(a.labels, b.labels)


def test_bytes_after_the_committed_index_are_ignored_and_cut(tmp_path):
    """A crash between appending data and writing the index leaves extra bytes: the
    reader ignores them, the next prepare cuts them off."""
    dataset = array_dataset(4)
    prepare(dataset, tmp_path / "c", size=8, progress=False)
    with open(tmp_path / "c" / "images.u8", "ab") as f:
        f.write(b"\xff" * 100)
    with open(tmp_path / "c" / "reports.jsonl", "ab") as f:
        f.write(b'{"source": "torn", "rep')
    cache = PreparedDataset(tmp_path / "c")
    assert len(cache) == 4 and cache.images.shape == (4, 8, 8)
    bigger = array_dataset(6)
    prepare(bigger, tmp_path / "c", size=8, progress=False)
    assert os.path.getsize(tmp_path / "c" / "images.u8") == 6 * 64
    cache = PreparedDataset(tmp_path / "c")
    np.testing.assert_array_equal(cache.images[5], resize_center_crop(bigger.images[5], 8))
    assert cache.reports == bigger.reports


def test_damaged_cache_is_refused(tmp_path):
    prepare(array_dataset(4), tmp_path / "c", size=8, progress=False)
    with open(tmp_path / "c" / "images.u8", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="holds 100 bytes"):
        PreparedDataset(tmp_path / "c")
    with pytest.raises(ValueError, match="damaged"):
        prepare(array_dataset(4), tmp_path / "c", size=8, progress=False)
    summary = prepare(
        array_dataset(4), tmp_path / "c", size=8, progress=False, overwrite=True
    )
    assert summary.new == 4


def test_prepare_refuses_a_different_cache(tmp_path):
    prepare(array_dataset(4), tmp_path / "c", size=8, progress=False)
    with pytest.raises(ValueError, match="size 8, not 16"):
        prepare(array_dataset(4), tmp_path / "c", size=16, progress=False)
    other = ArrayDataset(array_dataset(2).images, ["x", "y"])
    other.sources = ["elsewhere/0", "elsewhere/1"]
    with pytest.raises(ValueError, match="label_names"):
        prepare(other, tmp_path / "c", size=8, progress=False)
    changed = array_dataset(4)
    changed.reports[1] = "A different report."
    with pytest.raises(ValueError, match="report of 'array\\[1\\]' differs"):
        prepare(changed, tmp_path / "c", size=8, progress=False)
    unrelated = array_dataset(4)
    unrelated.sources = [f"other[{k}]" for k in range(4)]
    with pytest.raises(ValueError, match="4 prepared images whose sources"):
        prepare(unrelated, tmp_path / "c", size=8, progress=False)
    with pytest.raises(FileNotFoundError, match="convirt prepare"):
        PreparedDataset(tmp_path / "nothing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable index"):
        PreparedDataset(tmp_path / "junk")


def test_missing_corrupt_and_empty_are_reported_skipped_counted(tmp_path, capsys):
    paths = write_pngs(tmp_path / "imgs", 4)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rows = [
        ["imgs/img0.png", "Good zero."],
        ["imgs/missing.png", "Lost."],
        ["imgs/img1.png", "Good one."],
        ["imgs/bad.png", "Corrupt."],
        ["imgs/img2.png", "   "],
        ["imgs/img3.png", "Good three."],
    ]
    path = write_csv(tmp_path / "p.csv", ["image", "report"], rows)
    with pytest.warns(
        UserWarning,
        match=r"skipped 3 of 6 pairs: 1 missing, 1 corrupt, "
        r"1 empty",
    ):
        summary = prepare(CSVDataset(path), tmp_path / "c", size=12, progress=True)
    assert (summary.prepared, summary.missing, summary.corrupt, summary.empty_report) == (
        3,
        1,
        1,
        1,
    )
    assert {status for _, status, _ in summary.failures} == {
        "missing",
        "corrupt",
        "empty_report",
    }
    assert "3 skipped: 1 missing, 1 corrupt, 1 empty reports" in str(summary)
    err = capsys.readouterr().err
    assert "skipped" in err and "missing.png" in err and "bad.png" in err
    cache = PreparedDataset(tmp_path / "c")
    assert cache.reports == ["Good zero.", "Good one.", "Good three."]
    np.testing.assert_array_equal(cache.images[1], decode_image(paths[1], size=12))
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    statuses = [e["status"] for e in index["entries"]]
    assert statuses == ["ok", "missing", "ok", "corrupt", "empty_report", "ok"]
    assert "image not found" in index["entries"][1]["error"]

    # The missing file appears: the next run adds it and keeps the rest.
    Image.fromarray(gradient_image(24, 32, 9)).save(tmp_path / "imgs" / "missing.png")
    dataset = CountingDataset(CSVDataset(path))
    with pytest.warns(UserWarning, match="skipped 2 of 6"):
        summary = prepare(dataset, tmp_path / "c", size=12, progress=False)
    assert summary.kept == 3 and summary.new == 1 and sorted(dataset.loaded) == [1, 3]
    assert PreparedDataset(tmp_path / "c").reports == [
        "Good zero.",
        "Good one.",
        "Good three.",
        "Lost.",
    ]


def test_same_image_twice_with_different_reports(tmp_path):
    write_pngs(tmp_path, 1)
    path = write_csv(
        tmp_path / "p.csv",
        ["image", "report"],
        [["img0.png", "First read."], ["img0.png", "Second read."]],
    )
    prepare(CSVDataset(path), tmp_path / "c", size=8, progress=False)
    prepare(CSVDataset(path), tmp_path / "c", size=8, progress=False)  # resumes
    cache = PreparedDataset(tmp_path / "c")
    assert cache.reports == ["First read.", "Second read."]


def test_labels_with_nan_roundtrip(tmp_path):
    dataset = array_dataset(3)
    dataset.labels[1, 2] = np.nan
    prepare(dataset, tmp_path / "c", size=8, progress=False)
    np.testing.assert_array_equal(PreparedDataset(tmp_path / "c").labels, dataset.labels)


def test_prepare_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        prepare(array_dataset(2), tmp_path / "c", size=0)
    with pytest.raises(ValueError, match="workers"):
        prepare(array_dataset(2), tmp_path / "c", size=8, workers=0)
    with pytest.raises(TypeError, match="dataset must be a PairedDataset"):
        prepare([1, 2], tmp_path / "c", size=8)  # was AttributeError: no 'sources'


def test_a_second_prepare_on_a_busy_folder_is_refused(tmp_path):
    # Two prepares on one folder both appended to images.u8 and reports.jsonl, and the
    # last index written won: rows of one run described by the other's index.
    started, release = threading.Event(), threading.Event()

    class Waits(CountingDataset):
        def _load(self, index, size):
            started.set()
            release.wait(30)
            return super()._load(index, size)

    first = {}

    def run_first():
        first["summary"] = prepare(
            Waits(array_dataset(3)), tmp_path / "c", size=8, progress=False, workers=1
        )

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert started.wait(30)
        with pytest.raises(StateError, match="another convirt prepare is writing"):
            prepare(array_dataset(5, seed=1), tmp_path / "c", size=8, progress=False)
    finally:
        release.set()
        thread.join(30)
    assert first["summary"].prepared == 3
    cache = PreparedDataset(tmp_path / "c")
    assert cache.reports == array_dataset(3).reports
    again = prepare(array_dataset(5), tmp_path / "c", size=8, progress=False)
    assert (again.kept, again.new) == (3, 2)  # the lock was let go


def test_prepare_runs_unlocked_where_the_file_system_has_no_locks(tmp_path, monkeypatch):
    # flock fails with ENOLCK on some network mounts: prepare worked there before it
    # took a lock, and still does (without removing staging files it cannot vouch for).
    import errno

    import convirt.prepared

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / ".tmp-images.u8-abc").write_bytes(b"x")
    monkeypatch.setattr(convirt.prepared.fcntl, "flock", no_locks)
    summary = prepare(array_dataset(3), tmp_path / "c", size=8, progress=False)
    assert summary.prepared == 3 and (tmp_path / "c" / ".tmp-images.u8-abc").exists()


def test_index_is_written_atomically_and_readable(tmp_path):
    prepare(array_dataset(2), tmp_path / "c", size=8, progress=False)
    mode = os.stat(tmp_path / "c" / "index.json").st_mode & 0o777
    assert mode == os.stat(tmp_path / "c" / "images.u8").st_mode & 0o777
    assert not [p for p in os.listdir(tmp_path / "c") if p.startswith(".tmp")]


# --------------------------------------------------------------------------------------
# BatchLoader
# --------------------------------------------------------------------------------------


def test_loader_order_is_a_function_of_seed_and_epoch():
    dataset = array_dataset(23)
    loader = BatchLoader(dataset, batch_size=5, seed=3, drop_last=False)
    epoch0 = [b.indices.tolist() for b in loader]
    epoch1 = [b.indices.tolist() for b in loader]
    assert loader.epoch == 2
    assert epoch0 != epoch1
    assert sorted(k for b in epoch0 for k in b) == list(range(23))
    assert sorted(k for b in epoch1 for k in b) == list(range(23))
    assert [len(b) for b in epoch0] == [5, 5, 5, 5, 3] and len(loader) == 5
    again = BatchLoader(dataset, batch_size=5, seed=3, drop_last=False, prefetch=False)
    assert [b.indices.tolist() for b in again] == epoch0
    again.set_epoch(1)
    assert [b.indices.tolist() for b in again] == epoch1
    other_seed = BatchLoader(dataset, batch_size=5, seed=4, drop_last=False)
    assert [b.indices.tolist() for b in other_seed] != epoch0
    expected = np.random.default_rng([3, 0]).permutation(23)
    assert epoch0[0] == sorted(expected[:5].tolist())


def test_loader_batches_hold_the_right_pairs(tmp_path):
    dataset = array_dataset(10)
    prepare(dataset, tmp_path / "c", size=16, progress=False)
    cache = PreparedDataset(tmp_path / "c")
    loader = BatchLoader(cache, batch_size=4, seed=1)
    assert len(loader) == 2
    for batch in loader:
        assert batch.images.shape == (4, 16, 16) and batch.images.dtype == np.uint8
        for row, k in enumerate(batch.indices):
            np.testing.assert_array_equal(batch.images[row], cache.images[k])
            assert batch.reports[row] == cache.reports[k]
        np.testing.assert_array_equal(batch.labels, cache.labels[batch.indices])


def test_loader_without_shuffle_gives_views():
    dataset = array_dataset(8)
    batches = list(BatchLoader(dataset, batch_size=4, shuffle=False))
    assert [b.indices.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(np.shares_memory(b.images, dataset.images) for b in batches)


def test_loader_decodes_files_when_given_a_size(tmp_path):
    write_pngs(tmp_path, 3)
    path = write_csv(
        tmp_path / "p.csv",
        ["image", "report"],
        [[f"img{k}.png", f"R{k}."] for k in range(3)],
    )
    dataset = CSVDataset(path)
    with pytest.raises(ValueError, match="size="):
        BatchLoader(dataset, batch_size=2)
    batch = next(iter(BatchLoader(dataset, batch_size=3, size=10, shuffle=False)))
    assert batch.images.shape == (3, 10, 10) and batch.reports == ["R0.", "R1.", "R2."]
    assert batch.labels is None


def test_loader_prefetches_one_batch_ahead_in_a_thread():
    calls = []

    def transform(batch):
        calls.append((int(batch.indices[0]), threading.current_thread().name))
        return batch

    dataset = array_dataset(20)
    loader = BatchLoader(dataset, batch_size=4, shuffle=False, transform=transform)
    iterator = iter(loader)
    first = next(iterator)
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    # While the caller holds batch 0, batch 1 has been made, and no further one.
    assert [k for k, _ in calls] == [0, 4]
    assert first.indices[0] == 0
    assert all(name != threading.current_thread().name for _, name in calls)
    assert all(name.startswith("convirt-prefetch") for _, name in calls)
    rest = list(iterator)
    assert [int(b.indices[0]) for b in rest] == [4, 8, 12, 16]

    calls.clear()
    list(
        BatchLoader(
            dataset, batch_size=4, shuffle=False, transform=transform, prefetch=False
        )
    )
    assert all(name == threading.current_thread().name for _, name in calls)


def test_loader_errors_reach_the_caller_and_early_exit_is_clean():
    def failing(batch):
        if batch.indices[0] == 4:
            raise RuntimeError("augmentation failed")
        return batch

    dataset = array_dataset(12)
    iterator = iter(BatchLoader(dataset, batch_size=4, shuffle=False, transform=failing))
    next(iterator)
    with pytest.raises(RuntimeError, match="augmentation failed"):
        next(iterator)
    before = threading.active_count()
    for _ in BatchLoader(dataset, batch_size=4):
        break
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before


def test_loader_rejects_bad_arguments():
    dataset = array_dataset(4)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            BatchLoader(dataset, batch_size=bad)
    with pytest.raises(TypeError, match="transform"):
        BatchLoader(dataset, transform=3)
    for seed in (-1, 0.5):  # -1 failed at the first epoch, in NumPy, without a name
        with pytest.raises(ValueError, match="seed must be an integer >= 0"):
            BatchLoader(dataset, batch_size=2, seed=seed)
    assert list(BatchLoader(dataset, batch_size=8)) == []  # drop_last: no full batch
    assert "BatchLoader(ArrayDataset(n=4)" in repr(BatchLoader(dataset, batch_size=2))


def test_impressions_take_the_impression_or_the_whole_report():
    reports = [
        "FINDINGS: Heart size is normal.\nIMPRESSION: No acute process.",
        "Heart size is normal. Lungs are clear.",
        "",
    ]
    with pytest.warns(UserWarning, match="2 of 3 reports have no IMPRESSION"):
        taken = impressions(reports)
    assert taken == [
        "No acute process.",
        "Heart size is normal. Lungs are clear.",
        "",
    ]
