"""Paired image-report data: datasets, image decoding, the prepared memmap cache and a
background batch loader.

Where the pairs come from:

- :class:`ArrayDataset` - uint8 NumPy images (N, H, W) plus a list of N report strings.
- :class:`CSVDataset` - a CSV or TSV file with an image-path column and a report column.
- :class:`FolderDataset` - a folder of images, each with a report text file beside it.
- :class:`MIMICCXRDataset` - the MIMIC-CXR-JPG layout (metadata and split CSVs, the
  ``files/pXX/pYYYYYYY/sZZZZZZZZ/`` tree, the reports tree).
- :class:`PreparedDataset` - the cache :func:`prepare` writes: every image decoded and
  resized once into one uint8 memmap (N, size, size), read in place during training.

Every dataset has ``len(dataset)``, ``dataset[i] -> (image, report)``, ``.reports``,
``.sources`` (where entry i came from), ``.labels`` ((N, L) float32 or None),
``.label_names`` and ``load_image(i, size=None)``.

Files are checked before they are used: a file that is not a regular file (a FIFO, a
device) is refused rather than read, and a malformed table, index or reports file raises
:class:`DataFileError` (a ValueError) naming the file and the line or field.

Images are grayscale uint8. :func:`decode_image` reads PNG, JPEG, TIFF, BMP (Pillow)
and DICOM (pydicom, the optional ``convirt[dicom]`` extra) and documents how images
deeper than 8 bits are brought to uint8. :class:`BatchLoader` yields batches in a
deterministic order and prepares the next one in a background thread.
"""

import concurrent.futures
import csv
import gzip
import io
import json
import math
import os
import re
import stat
import sys
import time
import warnings
import zlib
from typing import NamedTuple

import numpy as np

from ._io import atomic_write, check_regular_file, read_regular_file
from .errors import DataFileError, ImageDecodeError

__all__ = [
    "ArrayDataset",
    "Batch",
    "BatchLoader",
    "CSVDataset",
    "DataFileError",
    "FolderDataset",
    "ImageDecodeError",
    "MIMICCXRDataset",
    "PairedDataset",
    "PrepareSummary",
    "PreparedDataset",
    "decode_image",
    "dicom_to_uint8",
    "extract_sections",
    "format_sections",
    "prepare",
    "resize_center_crop",
    "split_sentences",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
DICOM_EXTENSIONS = (".dcm", ".dicom")


# --------------------------------------------------------------------------------------
# Image decoding
# --------------------------------------------------------------------------------------


def decode_image(path, size=None):
    """Decode one image file to a grayscale uint8 array.

    Parameters
    ----------
    path : str or os.PathLike
        A PNG, JPEG, TIFF or BMP file (read with Pillow), or a DICOM file (read with
        pydicom; recognised by a ``.dcm``/``.dicom`` suffix or the ``DICM`` marker).
    size : int, optional
        If given, the shorter side is resized to ``size`` and the centre cropped to
        ``size x size`` (antialiased bilinear; see :func:`resize_center_crop`). Large
        JPEGs are then decoded at a reduced scale (Pillow's ``draft``), which is much
        faster and still at least ``size`` on the shorter side.

    Returns
    -------
    numpy.ndarray, uint8, shape (H, W) or (size, size)

    How pixel values become uint8:

    - 8-bit grayscale is kept as it is; colour (RGB, palette, with alpha) is converted
      to luma with Pillow's ITU-R 601-2 weights (L = 0.299 R + 0.587 G + 0.114 B).
    - Deeper images (16-bit PNG/TIFF, 32-bit integer or float) are scaled linearly from
      their own minimum (-> 0) to their maximum (-> 255); a constant image gives 0.
      (Dividing by 257 instead would leave 12-bit data stored in 16 bits nearly black.)
    - DICOM: see :func:`dicom_to_uint8` (rescale slope/intercept, then the window or
      min-max, then MONOCHROME1 inverted).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ImageDecodeError
        The file exists but is not a decodable image (truncated, corrupt, empty), or is
        not a regular file (a FIFO or a device would block or never end).
    ImportError
        A DICOM file needs pydicom (or a JPEG 2000 / JPEG-LS decoder) that is not
        installed; ``pip install 'convirt[dicom]'``.
    """
    path = os.fspath(path)
    if size is not None:
        size = _check_size(size)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image not found: {path}")
    if os.path.isdir(path):
        raise ImageDecodeError(f"cannot decode {path}: it is a directory, not an image")
    check_regular_file(path, ImageDecodeError, "an image file")
    if _is_dicom(path):
        return _decode_dicom(path, size)
    return _decode_pillow(path, size)


def resize_center_crop(image, size):
    """Resize a grayscale uint8 image so its shorter side is ``size``, then crop the
    centre ``size x size``. Pillow's bilinear filter, widened when shrinking, so it
    antialiases. A (2000, 1600) image becomes (size, size) from its centred 1600 x 1600
    square.

    image: uint8 (H, W). Returns a new uint8 array (size, size)."""
    from PIL import Image

    size = _check_size(size)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise TypeError(f"resize_center_crop expects a uint8 (H, W) image; got "
                        f"{image.dtype} with shape {image.shape}")
    if image.shape == (size, size):
        return image.copy()
    return _pil_resize_center_crop(Image.fromarray(image), size)


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer; got {size!r}")
    return int(size)


def _pil_resize_center_crop(image, size):
    from PIL import Image

    width, height = image.size
    side = min(width, height)
    left = (width - side) / 2
    top = (height - side) / 2
    box = (left, top, left + side, top + side)
    resized = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized, dtype=np.uint8).copy()


def _is_dicom(path):
    if path.lower().endswith(DICOM_EXTENSIONS):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _minmax_to_uint8(values):
    """Linear map of an array's own [min, max] to [0, 255], rounded; NaN -> 0."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low = values[finite].min()
    high = values[finite].max()
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    scaled[~finite] = 0.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _decode_pillow(path, size):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if size is not None and image.format == "JPEG":
                width, height = image.size
                side = min(width, height)
                image.draft("L", (math.ceil(size * width / side),
                                  math.ceil(size * height / side)))
            image.load()
            if image.mode == "L":
                gray = image.copy()
            elif image.mode.startswith("I") or image.mode == "F":
                gray = Image.fromarray(_minmax_to_uint8(np.asarray(image)))
            else:
                gray = image.convert("L")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot decode {path}: {error}") from error
    if gray.size[0] == 0 or gray.size[1] == 0:
        raise ImageDecodeError(f"cannot decode {path}: the image has no pixels")
    if size is None:
        return np.asarray(gray, dtype=np.uint8).copy()
    return _pil_resize_center_crop(gray, size)


def _import_pydicom():
    try:
        import pydicom
    except ImportError as error:
        raise ImportError("reading DICOM files needs pydicom, an optional extra: "
                          "pip install 'convirt[dicom]'") from error
    return pydicom


def _decode_dicom(path, size):
    from PIL import Image

    pydicom = _import_pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError,
            AttributeError, IndexError) as error:
        raise ImageDecodeError(f"cannot decode {path}: not a readable DICOM file "
                               f"({error})") from error
    if "PixelData" not in dataset:
        raise ImageDecodeError(f"cannot decode {path}: the DICOM file has no pixel data")
    _check_dicom_decoder(dataset, path)
    try:
        image = dicom_to_uint8(dataset)
    except ImportError:
        raise
    except Exception as error:  # pydicom raises many types for damaged pixel data
        raise ImageDecodeError(f"cannot decode {path}: {type(error).__name__}: "
                               f"{error}") from error
    if size is None:
        return image
    return _pil_resize_center_crop(Image.fromarray(image), size)


def _check_dicom_decoder(dataset, path):
    """ImportError naming the missing package when the file's transfer syntax (JPEG
    2000, JPEG-LS, ...) has no installed decoder, rather than skipping every such file
    as corrupt."""
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2.x: leave it to pixel_array
        return
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise ImportError(f"{path}: pydicom cannot decode transfer syntax "
                          f"{syntax.name}: {error}") from error
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise ImportError(f"{path}: no installed decoder for transfer syntax "
                          f"{syntax.name} ({missing}); pip install 'convirt[dicom]' "
                          f"provides JPEG 2000 through pylibjpeg-openjpeg")


def dicom_to_uint8(dataset):
    """The pixels of a pydicom Dataset as a displayable grayscale uint8 (H, W) array.

    In order, following the DICOM display pipeline (PS3.3 C.11):

    1. Modality: ``value * RescaleSlope + RescaleIntercept`` when present (a Modality
       LUT Sequence is applied through pydicom instead).
    2. VOI: the first WindowCenter/WindowWidth pair when present, with the standard's
       LINEAR formula (or LINEAR_EXACT / SIGMOID when VOILUTFunction says so), mapped
       to [0, 255]; else a VOI LUT Sequence through pydicom, then min-max; else the
       image's own min-max (see :func:`decode_image`).
    3. MONOCHROME1 (high values displayed dark) is inverted, ``255 - value``, so that
       bone is bright and air dark in every output.

    Multi-frame images give their first frame; colour images are converted to luma
    (0.299 R + 0.587 G + 0.114 B) and are not windowed.
    """
    pixels = dataset.pixel_array
    samples = int(dataset.get("SamplesPerPixel", 1))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if samples == 3:
        rgb = np.asarray(pixels, dtype=np.float64)
        luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        if np.asarray(pixels).dtype == np.uint8:
            return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
        return _minmax_to_uint8(luma)
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale DICOM image; got pixel data of "
                         f"shape {pixels.shape}")

    if "ModalityLUTSequence" in dataset:
        values = _pydicom_pixels_function("apply_modality_lut")(pixels, dataset)
        values = np.asarray(values, dtype=np.float64)
    else:
        values = pixels.astype(np.float64)
        slope = dataset.get("RescaleSlope")
        intercept = dataset.get("RescaleIntercept")
        if slope is not None and float(slope) != 0.0:
            values = values * float(slope)
        if intercept is not None:
            values = values + float(intercept)

    window = _dicom_window(dataset)
    if window is not None:
        center, width, function = window
        if function == "SIGMOID":
            unit = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        elif function == "LINEAR_EXACT":
            unit = (values - center) / width + 0.5
        else:  # LINEAR, PS3.3 C.11.2.1.2.1
            unit = (values - (center - 0.5)) / (width - 1.0) + 0.5
        image = np.clip(np.rint(np.clip(unit, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)
    elif "VOILUTSequence" in dataset:
        lut_values = _pydicom_pixels_function("apply_voi_lut")(pixels, dataset)
        image = _minmax_to_uint8(lut_values)
    else:
        image = _minmax_to_uint8(values)

    if str(dataset.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        image = 255 - image
    return image


def _dicom_window(dataset):
    """(center, width, function) of the first window in the dataset, or None when it
    has none or the width is not usable."""
    center = dataset.get("WindowCenter")
    width = dataset.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        center = float(center[0] if _is_multivalue(center) else center)
        width = float(width[0] if _is_multivalue(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    minimum_width = 1.0 if function == "LINEAR" else 0.0
    if not np.isfinite(center) or not np.isfinite(width) or width <= minimum_width:
        return None
    return center, width, function


def _is_multivalue(value):
    return not isinstance(value, (str, bytes)) and hasattr(value, "__len__")


def _pydicom_pixels_function(name):
    try:
        import pydicom.pixels as module
    except ImportError:  # pydicom 2.x
        import pydicom.pixel_data_handlers.util as module
    return getattr(module, name)


# --------------------------------------------------------------------------------------
# Reports: sections and sentences
# --------------------------------------------------------------------------------------

_FINDINGS_NAMES = {"finding", "findings"}
_IMPRESSION_NAMES = {"impression", "impressions", "conclusion", "conclusions",
                     "summary", "opinion"}
_BOTH_NAMES = {"findings and impression", "impression and findings",
               "findings/impression", "impression/findings", "findings & impression",
               "findings and impressions", "findings impression"}
_OTHER_NAMES = {"examination", "exam", "indication", "indications", "history",
                "clinical history", "clinical information", "reason for exam",
                "reason for examination", "technique", "comparison", "comparisons",
                "recommendation", "recommendations", "notification", "wet read",
                "final report", "addendum", "procedure", "type of examination"}
_KNOWN_HEADINGS = _FINDINGS_NAMES | _IMPRESSION_NAMES | _BOTH_NAMES | _OTHER_NAMES

# A heading starts a line: "FINDINGS:", "Impression -", "FINDINGS AND IMPRESSION:".
# Known names are matched in any case; any other ALL-CAPS "WORDS:" ends a section too.
_HEADING = re.compile(
    r"^[ \t]*(?P<name>[A-Za-z][A-Za-z /&()]{0,40}?)[ \t]*(?::|[ \t]-[ \t]|-[ \t]*$)",
    re.MULTILINE)


def extract_sections(text):
    """The FINDINGS and IMPRESSION sections of a radiology report.

    Headings are recognised at the start of a line, in any case, followed by a colon
    (or " - "): FINDING(S), IMPRESSION(S), CONCLUSION(S), SUMMARY, OPINION, and the
    combined "FINDINGS AND IMPRESSION" (its text goes to ``findings``). A section ends
    at the next heading (any known heading such as INDICATION, COMPARISON, or any
    ALL-CAPS words followed by a colon). Whitespace inside a section is collapsed.

    When a report has neither section, its last paragraph (text after the last blank
    line, headings removed) is taken as the impression, as MIMIC-CXR's own section
    script does for reports written without headings.

    Returns ``{"findings": str, "impression": str}``; a missing section is ``""``.
    """
    if text is None:
        return {"findings": "", "impression": ""}
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    headings = []
    for match in _HEADING.finditer(text):
        raw = match.group("name").strip()
        name = re.sub(r"\s+", " ", raw.lower()).replace("(s)", "s")
        if name in _KNOWN_HEADINGS or (raw.isupper() and len(raw) >= 3):
            headings.append((match.start(), match.end(), name))
    sections = {"findings": [], "impression": []}
    for k, (_, end, name) in enumerate(headings):
        stop = headings[k + 1][0] if k + 1 < len(headings) else len(text)
        body = _collapse(text[end:stop])
        if not body:
            continue
        if name in _FINDINGS_NAMES or name in _BOTH_NAMES:
            sections["findings"].append(body)
        elif name in _IMPRESSION_NAMES:
            sections["impression"].append(body)
    result = {key: " ".join(parts) for key, parts in sections.items()}
    if not result["findings"] and not result["impression"]:
        result["impression"] = _last_paragraph(text, headings)
    return result



def impressions(reports):
    """Each report's IMPRESSION section (the whole report when it has none): the text to
    pair with an image when only the radiologist's conclusions should be sampled."""
    return [extract_sections(r)["impression"] or r for r in reports]

def _collapse(text):
    return re.sub(r"\s+", " ", text).strip()


def _last_paragraph(text, headings):
    for start, end, _ in reversed(headings):
        text = text[:start] + " " * (end - start) + text[end:]
    paragraphs = [_collapse(p) for p in re.split(r"\n[ \t]*\n", text)]
    paragraphs = [p for p in paragraphs if p]
    return paragraphs[-1] if paragraphs else ""


def format_sections(sections):
    """``"FINDINGS: ...\\nIMPRESSION: ..."`` from a dict like the one
    :func:`extract_sections` returns; empty sections are left out."""
    lines = []
    for key in ("findings", "impression"):
        body = (sections.get(key) or "").strip()
        if body:
            lines.append(f"{key.upper()}: {body}")
    return "\n".join(lines)


_SECTION_HEADING = re.compile(
    r"(?i)\b(findings and impression|findings|finding|impressions|impression|"
    r"conclusions|conclusion)\s*:")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9_])")


def split_sentences(report):
    """The sentences of a report, section headings removed: what ConVIRT samples from
    (one sentence, uniformly, per report per step).

    ``"FINDINGS: Heart size is normal. No effusion.\\nIMPRESSION: Normal."`` gives
    ``["Heart size is normal.", "No effusion.", "Normal."]``. Splits after ``.``,
    ``!`` or ``?`` followed by a capital or digit, and at line breaks; fragments with
    no letters (list numbers like ``"1."``) are dropped. An empty report gives ``[]``.
    """
    if not report:
        return []
    text = _SECTION_HEADING.sub("\n", str(report))
    sentences = []
    for line in re.split(r"\n+", text):
        for piece in _SENTENCE_END.split(line.strip()):
            piece = re.sub(r"^\d+[.)]\s*", "", piece.strip())
            if re.search(r"[A-Za-z]", piece):
                sentences.append(piece)
    return sentences


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------


class PairedDataset:
    """Base of every dataset: N (image, report) pairs.

    Subclasses fill ``reports`` (list of N str), ``sources`` (list of N str: a file path
    or ``"array[i]"``), ``labels`` ((N, L) float32 with NaN for unknown, or None),
    ``label_names`` (list of L str, or None), and implement ``_load(index, size)``.
    """

    reports = ()
    sources = ()
    labels = None
    label_names = None

    def __len__(self):
        return len(self.reports)

    def _check_index(self, index):
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset index must be an integer; got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} pairs")
        return int(index) % n

    def load_image(self, index, size=None):
        """Image ``index`` as grayscale uint8 (H, W), or (size, size) when ``size`` is
        given (shorter side resized, centre cropped). Raises FileNotFoundError for a
        missing file and ImageDecodeError for a corrupt one."""
        return self._load(self._check_index(index), None if size is None else
                          _check_size(size))

    def _load(self, index, size):
        raise NotImplementedError

    def __getitem__(self, index):
        index = self._check_index(index)
        return self._load(index, None), self.reports[index]

    def __repr__(self):
        labels = "" if self.label_names is None else f", labels={len(self.label_names)}"
        return f"{type(self).__name__}(n={len(self)}{labels})"


def _check_reports(reports, n=None, what="reports"):
    if isinstance(reports, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, one per image; got a single "
                        f"{type(reports).__name__}")
    reports = list(reports)
    for k, report in enumerate(reports):
        if not isinstance(report, str):
            raise TypeError(f"{what}[{k}] must be a str; got {type(report).__name__}")
    if n is not None and len(reports) != n:
        raise ValueError(f"got {n} images but {len(reports)} {what}; they must pair up "
                         f"one to one")
    return reports


def _check_labels(labels, label_names, n):
    if labels is None:
        if label_names is not None:
            raise ValueError("label_names given without labels")
        return None, None
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n}, L) for {n} images; got "
                         f"{labels.shape}")
    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == bool):
        raise TypeError(f"labels must be numeric; got dtype {labels.dtype}")
    labels = labels.astype(np.float32, copy=False)
    if label_names is None:
        label_names = [f"label_{k}" for k in range(labels.shape[1])]
    label_names = [str(name) for name in label_names]
    if len(label_names) != labels.shape[1]:
        raise ValueError(f"{len(label_names)} label_names for {labels.shape[1]} label "
                         f"columns")
    return labels, label_names


class ArrayDataset(PairedDataset):
    """Pairs from memory: uint8 images and a list of report strings.

    Parameters
    ----------
    images : uint8 ndarray (N, H, W), or a sequence of N uint8 (H_i, W_i) arrays
        Kept as given (no copy). A (N, H, W) array is also ``.images``, which
        :class:`BatchLoader` gathers batches from directly.
    reports : sequence of N str
    labels : array (N, L), optional
        Stored as float32 (NaN = unknown).
    label_names : sequence of L str, optional
    """

    def __init__(self, images, reports, labels=None, label_names=None):
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8:
                raise TypeError(f"images must be uint8 (N, H, W); got dtype {images.dtype}"
                                f" (scale to 0-255 and convert with .astype(np.uint8))")
            if images.ndim != 3:
                raise ValueError(f"images must be uint8 (N, H, W) grayscale; got shape "
                                 f"{images.shape}")
        else:
            images = list(images)
            for k, image in enumerate(images):
                if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or \
                        image.ndim != 2:
                    raise TypeError(f"images[{k}] must be a uint8 (H, W) array; got "
                                    f"{_describe(image)}")
        self.images = images
        self.reports = _check_reports(reports, len(images))
        self.sources = [f"array[{k}]" for k in range(len(images))]
        self.labels, self.label_names = _check_labels(labels, label_names, len(images))

    def _load(self, index, size):
        image = self.images[index]
        if size is None:
            return image
        return resize_center_crop(np.ascontiguousarray(image), size)

    def __getitem__(self, index):
        index = self._check_index(index)
        return self.images[index], self.reports[index]


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"a {type(value).__name__}"


class _FileDataset(PairedDataset):
    """Datasets whose images are files: ``sources`` are the paths."""

    def _load(self, index, size):
        return decode_image(self.sources[index], size=size)


def _read_text(path):
    """The text of a CSV/TSV file, gunzipped when the name ends in .gz; a UTF-8
    byte-order mark is dropped. DataFileError for anything that is not UTF-8 text in a
    regular file (with the line of the first bad byte) or a truncated gzip stream."""
    raw = read_regular_file(path, DataFileError, "a CSV or TSV file")
    if str(path).endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except EOFError:
            raise DataFileError(f"{path} is truncated: the gzip stream ends before its "
                                "end marker (an interrupted download or copy?)") from None
        except (gzip.BadGzipFile, zlib.error) as error:
            raise DataFileError(f"{path} is not a readable gzip file: {error}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise DataFileError(f"{path}, line {line}: byte 0x{raw[error.start]:02x} is not "
                            "UTF-8 text; expected UTF-8 (re-save the file as UTF-8, e.g. "
                            "iconv -f latin1 -t utf-8)") from None


def _detect_delimiter(header_line):
    """Tab when the header line has more tabs than commas, else comma."""
    return "\t" if header_line.count("\t") > header_line.count(",") else ","


def _read_table(path, delimiter=None):
    """(column names, rows as lists, the line each row starts on) of a CSV/TSV
    (optionally .gz) file. Quoted fields may hold delimiters and line breaks, and a
    field may be of any length. The table is parsed strictly, because a stray quote
    otherwise merges every later row into one field: a quoted field that does not end
    with a quote followed by the delimiter or the end of the line, and a row with more
    non-empty fields than the header has columns (an unquoted delimiter in a report),
    raise DataFileError with the line."""
    text = _read_text(path)
    f = io.StringIO(text, newline="")
    header_line = f.readline()
    if not header_line.strip():
        raise DataFileError(f"{path} is empty: expected a header line with column names")
    if delimiter is None:
        delimiter = _detect_delimiter(header_line)
    columns = next(csv.reader([header_line], delimiter=delimiter))
    columns = [c.strip() for c in columns]
    reader = csv.reader(f, delimiter=delimiter, strict=True)
    rows, lines = [], []
    # The limit is process-wide: raised for this read (no field can be longer than the
    # text), then put back.
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))
    try:
        while True:
            line = reader.line_num + 2  # the header was line 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                raise DataFileError(
                    f"{path}, line {line}: the row starting here is not well-formed "
                    f"({error}): a field that starts with a quote must end with a quote "
                    f"followed by {delimiter!r} or the end of the line; a stray quote "
                    "would merge the rows after it") from None
            if not row:
                continue
            if len(row) > len(columns) and any(v.strip() for v in row[len(columns):]):
                raise DataFileError(
                    f"{path}, line {line}: {len(row)} fields, but the header has "
                    f"{len(columns)} columns; quote fields that contain {delimiter!r}")
            rows.append(row)
            lines.append(line)
    finally:
        csv.field_size_limit(limit)
    return columns, rows, lines


def _check_row(row, needed, path, line, columns):
    """Refuse a row too short to hold the columns at the indices `needed`."""
    if len(row) <= max(needed):
        raise DataFileError(f"{path}, line {line}: {len(row)} fields, but the header has "
                            f"{len(columns)} columns")


def _column_index(columns, name, path, role):
    if name in columns:
        return columns.index(name)
    found = ", ".join(repr(c) for c in columns)
    raise ValueError(f"{role} column {name!r} not found in {path}; columns found: {found}")


class CSVDataset(_FileDataset):
    """Pairs listed in a CSV or TSV file: one row per image.

    Parameters
    ----------
    path : str or os.PathLike
        The table (``.gz`` allowed). Comma or tab is detected from the header line
        (more tabs than commas -> tab) unless ``delimiter`` is given. Quoted fields may
        hold commas and line breaks.
    image_column, report_column : str
        Names of the column with image paths and the one with report text.
    root : str, optional
        Folder that relative image paths are resolved against; default the CSV's folder.
    label_columns : sequence of str, optional
        Numeric columns read into ``.labels`` (float32; blank -> NaN).
    delimiter : str, optional

    A wrong column name raises ValueError listing the columns found. A file that is not
    UTF-8, a truncated .gz, a stray quote (which would merge every later row into one
    report) or a row with more non-empty fields than the header has columns (an
    unquoted comma in a report) raises :class:`DataFileError` with the line; a short
    row gets empty fields. Fields may be of any length. Missing image files are not
    checked here: :func:`prepare` reports and skips them.
    """

    def __init__(self, path, image_column="image", report_column="report", root=None,
                 label_columns=None, delimiter=None):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"CSV file not found: {path}")
        columns, rows, lines = _read_table(path, delimiter)
        image_at = _column_index(columns, image_column, path, "image")
        report_at = _column_index(columns, report_column, path, "report")
        label_at = [_column_index(columns, name, path, "label")
                    for name in (label_columns or ())]
        base = os.path.abspath(root if root is not None else os.path.dirname(path) or ".")
        self.path = path
        self.root = base
        self.sources, self.reports = [], []
        self._empty_paths = set()
        labels = []
        for line, row in zip(lines, rows):
            row = row + [""] * (len(columns) - len(row))
            image_path = row[image_at].strip()
            if not image_path:
                self._empty_paths.add(len(self.sources))
                self.sources.append(f"<empty image path on line {line} of {path}>")
            else:
                self.sources.append(os.path.join(base, image_path))
            self.reports.append(row[report_at])
            if label_at:
                labels.append([_parse_label(row[k], path, line, columns[k])
                               for k in label_at])
        if label_at:
            self.labels = np.asarray(labels, np.float32).reshape(len(rows), len(label_at))
            self.label_names = list(label_columns)

    def _load(self, index, size):
        if index in self._empty_paths:
            raise FileNotFoundError(f"no image: {self.sources[index]}")
        return super()._load(index, size)

    def __repr__(self):
        return f"CSVDataset({self.path!r}, n={len(self)})"


def _parse_label(text, path, line, column):
    text = text.strip()
    if text == "":
        return np.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}, line {line}: label column {column!r} holds {text!r}, "
                         f"not a number") from None


class FolderDataset(_FileDataset):
    """Pairs from a folder: every image file (``.png .jpg .jpeg .tif .tiff .bmp .dcm
    .dicom``, searched recursively, sorted by path) with its report in a text file of
    the same stem beside it (``scan_001.png`` + ``scan_001.txt``).

    Parameters
    ----------
    folder : str or os.PathLike
    report_suffix : str, default ".txt"
    missing_reports : {"error", "skip"}, default "error"
        What to do with images that have no report file: raise ValueError naming them,
        or leave them out with a warning that counts them (``.skipped`` lists them).
    """

    def __init__(self, folder, report_suffix=".txt", missing_reports="error"):
        folder = os.fspath(folder)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"image folder not found: {folder}")
        if missing_reports not in ("error", "skip"):
            raise ValueError(f"missing_reports must be 'error' or 'skip'; got "
                             f"{missing_reports!r}")
        self.folder = os.path.abspath(folder)
        images = []
        for directory, _, files in os.walk(self.folder):
            for name in files:
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    images.append(os.path.join(directory, name))
        images.sort()
        self.sources, self.reports, self.skipped = [], [], []
        for image in images:
            report_path = os.path.splitext(image)[0] + report_suffix
            if not os.path.isfile(report_path):
                self.skipped.append(image)
                continue
            with open(report_path, encoding="utf-8", errors="replace") as f:
                self.reports.append(f.read().strip())
            self.sources.append(image)
        if self.skipped:
            examples = ", ".join(os.path.relpath(p, self.folder) for p in self.skipped[:3])
            message = (f"{len(self.skipped)} of {len(images)} images in {self.folder} have "
                       f"no {report_suffix} report beside them (e.g. {examples})")
            if missing_reports == "error":
                raise ValueError(message + "; pass missing_reports='skip' to leave them out")
            warnings.warn(message + "; they are left out", stacklevel=2)
        if not images:
            warnings.warn(f"no image files found in {self.folder}", stacklevel=2)

    def __repr__(self):
        return f"FolderDataset({self.folder!r}, n={len(self)})"


_SPLIT_ALIASES = {"train": "train", "training": "train", "validate": "validate",
                  "val": "validate", "valid": "validate", "validation": "validate",
                  "test": "test"}


# MIMIC-CXR ids: subjects and studies are numbers, DICOM ids hexadecimal groups joined by
# '-' (letters, digits, '.', '_' and '-' are accepted; never a path separator).
_MIMIC_NUMBER = re.compile(r"[0-9]{1,20}")
_MIMIC_DICOM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class MIMICCXRDataset(_FileDataset):
    """MIMIC-CXR-JPG: one pair per image, the report of the image's study.

    Parameters
    ----------
    root : str or os.PathLike
        The MIMIC-CXR-JPG folder: ``mimic-cxr-2.0.0-metadata.csv(.gz)``,
        ``mimic-cxr-2.0.0-split.csv(.gz)``, optionally ``mimic-cxr-2.0.0-chexpert.csv
        (.gz)``, and ``files/pXX/pYYYYYYY/sZZZZZZZZ/<dicom_id>.jpg``.
    split : {"train", "validate", "test"} or None, default "train"
        From the split CSV ("val"/"validation" also accepted); None keeps all images.
    views : sequence of str or None, default ("PA", "AP")
        ViewPosition values kept (frontal views); None keeps every view.
    reports_root : str, optional
        Where the reports tree (``files/pXX/pYYYYYYY/sZZZZZZZZ.txt``, from MIMIC-CXR's
        ``mimic-cxr-reports.zip``) lives. Default: ``root``, then
        ``root/mimic-cxr-reports``.
    sections : sequence, default ("findings", "impression")
        The report sections kept (see :func:`extract_sections`), written as
        ``"FINDINGS: ...\\nIMPRESSION: ..."``. A study with no report file gets ``""``
        and is counted in ``.missing_reports``; :func:`prepare` skips empty reports.

    ``.labels`` holds the CheXpert labels of the study (1, 0, -1 uncertain, NaN blank)
    when the chexpert CSV is present. ``.study_ids`` and ``.subject_ids`` are kept.
    """

    def __init__(self, root, split="train", views=("PA", "AP"), reports_root=None,
                 sections=("findings", "impression")):
        root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(root):
            raise FileNotFoundError(f"MIMIC-CXR-JPG folder not found: {root}")
        if split is not None:
            if split not in _SPLIT_ALIASES:
                raise ValueError(f"split must be 'train', 'validate', 'test' or None; got "
                                 f"{split!r}")
            split = _SPLIT_ALIASES[split]
        for section in sections:
            if section not in ("findings", "impression"):
                raise ValueError(f"sections may be 'findings' and 'impression'; got "
                                 f"{section!r}")
        self.root = root
        self.split = split
        self.views = None if views is None else tuple(str(v).upper() for v in views)
        metadata = self._table("metadata")
        splits = self._table("split") if split is not None else None
        chexpert = self._table("chexpert", required=False)

        columns, rows, lines = _read_table(metadata)
        at = {name: _column_index(columns, name, metadata, "metadata")
              for name in ("dicom_id", "subject_id", "study_id", "ViewPosition")}
        wanted = None
        if splits is not None:
            split_columns, split_rows, split_lines = _read_table(splits)
            dicom_at = _column_index(split_columns, "dicom_id", splits, "split")
            split_at = _column_index(split_columns, "split", splits, "split")
            for line, row in zip(split_lines, split_rows):
                _check_row(row, (dicom_at, split_at), splits, line, split_columns)
            wanted = {r[dicom_at].strip() for r in split_rows
                      if r[split_at].strip() == split}

        study_labels, self.label_names = {}, None
        if chexpert is not None:
            label_columns, label_rows, label_lines = _read_table(chexpert)
            study_at = _column_index(label_columns, "study_id", chexpert, "chexpert")
            names = [c for c in label_columns if c not in ("subject_id", "study_id")]
            name_at = [label_columns.index(c) for c in names]
            for line, row in zip(label_lines, label_rows):
                _check_row(row, (study_at,), chexpert, line, label_columns)
                study_labels[row[study_at].strip()] = [
                    _parse_label(row[k] if k < len(row) else "", chexpert, line,
                                 label_columns[k]) for k in name_at]
            self.label_names = names

        report_roots = [reports_root] if reports_root is not None else \
            [root, os.path.join(root, "mimic-cxr-reports")]
        self.sources, self.reports, self.study_ids, self.subject_ids = [], [], [], []
        self.missing_reports = 0
        labels = []
        report_cache = {}
        for line, row in zip(lines, rows):
            _check_row(row, at.values(), metadata, line, columns)
            dicom_id = row[at["dicom_id"]].strip()
            view = row[at["ViewPosition"]].strip().upper()
            if self.views is not None and view not in self.views:
                continue
            if wanted is not None and dicom_id not in wanted:
                continue
            subject = row[at["subject_id"]].strip()
            study = row[at["study_id"]].strip()
            # The ids become path components: they must not lead out of the root.
            for field, value, pattern in (("dicom_id", dicom_id, _MIMIC_DICOM_ID),
                                          ("subject_id", subject, _MIMIC_NUMBER),
                                          ("study_id", study, _MIMIC_NUMBER)):
                if not pattern.fullmatch(value) or ".." in value:
                    raise DataFileError(
                        f"{metadata}, line {line}: {field} {value[:80]!r} is not a "
                        f"MIMIC-CXR id (expected {pattern.pattern}); as a path it could "
                        f"lead outside {root}")
            folder = os.path.join("files", f"p{subject[:2]}", f"p{subject}")
            self.sources.append(os.path.join(root, folder, f"s{study}", dicom_id + ".jpg"))
            if study not in report_cache:
                report_cache[study] = self._report(report_roots, folder, study, sections)
                if not report_cache[study]:
                    self.missing_reports += 1
            self.reports.append(report_cache[study])
            self.study_ids.append(study)
            self.subject_ids.append(subject)
            if self.label_names is not None:
                labels.append(study_labels.get(study, [np.nan] * len(self.label_names)))
        if self.label_names is not None:
            self.labels = np.asarray(labels, np.float32).reshape(len(self.sources),
                                                                 len(self.label_names))

    def _table(self, kind, required=True):
        for suffix in (".csv.gz", ".csv"):
            for version in ("2.0.0", "2.1.0"):
                path = os.path.join(self.root, f"mimic-cxr-{version}-{kind}{suffix}")
                if os.path.isfile(path):
                    return path
        if required:
            raise FileNotFoundError(f"no mimic-cxr-2.0.0-{kind}.csv(.gz) in {self.root}; "
                                    f"is this the MIMIC-CXR-JPG folder?")
        return None

    @staticmethod
    def _report(report_roots, folder, study, sections):
        for base in report_roots:
            path = os.path.join(base, folder, f"s{study}.txt")
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    found = extract_sections(f.read())
                return format_sections({key: found[key] for key in sections})
        return ""

    def __repr__(self):
        return (f"MIMICCXRDataset({self.root!r}, split={self.split!r}, "
                f"views={self.views!r}, n={len(self)})")


# --------------------------------------------------------------------------------------
# The prepared cache
# --------------------------------------------------------------------------------------

PREPARED_FORMAT = "convirt-prepared"
PREPARED_VERSION = 1
_IMAGES_FILE = "images.u8"
_REPORTS_FILE = "reports.jsonl"
_INDEX_FILE = "index.json"
_MAX_PREPARED_SIZE = 1 << 16


class PrepareSummary(NamedTuple):
    """What :func:`prepare` did. ``failures`` lists (source, status, message) for every
    entry skipped in this run; statuses are "missing", "corrupt", "empty_report"."""

    out_dir: str
    total: int
    prepared: int
    kept: int
    new: int
    missing: int
    corrupt: int
    empty_report: int
    failures: list

    @property
    def skipped(self):
        return self.missing + self.corrupt + self.empty_report

    def __str__(self):
        text = (f"{self.prepared} of {self.total} pairs prepared in {self.out_dir} "
                f"({self.kept} kept from before, {self.new} new)")
        if self.skipped:
            text += (f"; {self.skipped} skipped: {self.missing} missing, "
                     f"{self.corrupt} corrupt, {self.empty_report} empty reports")
        return text


def prepare(dataset, out_dir, size=256, *, workers=None, progress=True, overwrite=False,
            checkpoint_seconds=30.0):
    """Decode and resize every image of ``dataset`` once into a uint8 memmap cache that
    :class:`PreparedDataset` reads in place.

    Each image becomes grayscale uint8 ``size x size``: shorter side resized to
    ``size``, centre cropped (:func:`decode_image`). ``out_dir`` receives:

    - ``images.u8``: raw uint8 rows (R, size, size), one per prepared pair;
    - ``reports.jsonl``: one JSON object per row, ``{"source", "report"[, "labels"]}``;
    - ``index.json``: format, size, row count, and for every dataset entry its source,
      status ("ok", "missing", "corrupt", "empty_report", "pending") and row.

    Re-running resumes: entries already "ok" (matched by source) are kept and not
    decoded again; the others are tried again, so a fixed file is picked up. A missing
    or corrupt image, or an empty report, is reported as it happens (on stderr), skipped,
    and counted in the returned summary and a final warning.

    Crash safety: rows are only appended; the data files are flushed and fsynced, then
    ``index.json`` is written atomically, every ``checkpoint_seconds`` and at the end
    (also when interrupted). The index is the truth: bytes past what it records (a
    crash mid-append) are ignored and cut off on the next run.

    Parameters
    ----------
    dataset : PairedDataset
    out_dir : str or os.PathLike (created if needed)
    size : int, default 256
    workers : int, optional
        Decoding threads (Pillow and the resize release the GIL); default
        ``min(4, os.cpu_count())``.
    progress : bool, default True
        A tqdm progress bar and one stderr line per skipped entry.
    overwrite : bool, default False
        Start afresh, discarding what ``out_dir`` holds.

    Returns
    -------
    PrepareSummary

    Raises ValueError when ``out_dir`` holds a cache of another size, or rows from
    sources (or with reports) this dataset does not have; use a new folder or
    ``overwrite=True``.
    """
    from tqdm.auto import tqdm

    size = _check_size(size)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    workers = min(4, os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers}")
    n = len(dataset)
    sources = [str(s) for s in dataset.sources]
    reports = list(dataset.reports)
    labels = getattr(dataset, "labels", None)
    label_names = getattr(dataset, "label_names", None)
    if labels is not None:
        labels = np.asarray(labels, np.float32).reshape(n, -1)
        if label_names is None:
            label_names = [f"label_{k}" for k in range(labels.shape[1])]
    # Entries are matched by (source, occurrence) on resume: one image may be listed
    # more than once (with different reports).
    seen = {}
    keys = []
    for source in sources:
        seen[source] = seen.get(source, 0) + 1
        keys.append((source, seen[source] - 1))

    index_path = os.path.join(out_dir, _INDEX_FILE)
    images_path = os.path.join(out_dir, _IMAGES_FILE)
    reports_path = os.path.join(out_dir, _REPORTS_FILE)
    old = None if overwrite else _read_index(index_path, missing_ok=True)
    if old is not None:
        if old["size"] != size:
            raise ValueError(f"{out_dir} holds images prepared at size {old['size']}, not "
                             f"{size}; use another out_dir or overwrite=True")
        old_names = old.get("label_names")
        if old["rows"] and old_names != (None if label_names is None else
                                         list(label_names)):
            raise ValueError(f"{out_dir} was prepared with label_names {old_names}, this "
                             f"dataset has {label_names}; use overwrite=True")
    rows = old["rows"] if old else 0
    reports_bytes = old["reports_bytes"] if old else 0
    for path, committed in ((images_path, rows * size * size),
                            (reports_path, reports_bytes)):
        actual = os.path.getsize(path) if os.path.exists(path) else 0
        if actual < committed:
            raise ValueError(f"{path} holds {actual} bytes but {index_path} records "
                             f"{committed}: the cache is damaged; use overwrite=True")
        # Cut off anything written after the last committed index (a crash mid-append).
        with open(path, "ab") as f:
            f.truncate(committed)

    done = {}
    if old:
        position = {key: k for k, key in enumerate(keys)}
        stray = []
        for entry in old["entries"]:
            if entry["status"] != "ok":
                continue
            k = position.get((entry["source"], entry.get("occurrence", 0)))
            if k is None:
                stray.append(entry["source"])
            else:
                done[k] = entry["row"]
        if stray:
            raise ValueError(f"{out_dir} holds {len(stray)} prepared images whose sources "
                             f"are not in this dataset (e.g. {stray[0]!r}); use a new "
                             f"out_dir or overwrite=True")
        old_reports = _read_reports(reports_path, rows, reports_bytes)
        for k, row in done.items():
            if old_reports[row]["report"] != reports[k]:
                raise ValueError(f"the report of {sources[k]!r} differs from the one "
                                 f"prepared in {out_dir}; use overwrite=True to redo it")

    entries = [{"source": source, "status": "pending"} if occurrence == 0 else
               {"source": source, "occurrence": occurrence, "status": "pending"}
               for source, occurrence in keys]
    for k, row in done.items():
        entries[k].update(status="ok", row=row)
    todo = [k for k in range(n) if k not in done]
    summary = {"missing": 0, "corrupt": 0, "empty_report": 0, "new": 0}
    failures = []

    def commit(complete):
        for f in (images_file, reports_file):
            f.flush()
            os.fsync(f.fileno())
        counts = {}
        for entry in entries:
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        header = {"format": PREPARED_FORMAT, "version": PREPARED_VERSION, "size": size,
                  "dtype": "uint8", "rows": rows, "reports_bytes": reports_bytes,
                  "complete": complete,
                  "label_names": None if label_names is None else list(label_names),
                  "counts": counts}
        # One entry per line: readable and greppable (grep '"corrupt"' index.json).
        text = (json.dumps(header)[:-1] + ',\n"entries": [\n' +
                ",\n".join(json.dumps(entry) for entry in entries) + "\n]}\n")
        atomic_write(index_path, text.encode("utf-8"))
        # atomic_write's temporary file is private (0600); give the index the same
        # permissions as the data files so a shared cache stays readable.
        os.chmod(index_path, stat.S_IMODE(os.stat(images_path).st_mode))

    def skip(k, status, message):
        summary[status] += 1
        entries[k].update(status=status, error=message)
        failures.append((sources[k], status, message))
        if progress:
            bar.write(f"convirt prepare: skipped {sources[k]}: {message}", file=sys.stderr)

    def load(k):
        try:
            return dataset.load_image(k, size=size), None
        except FileNotFoundError as error:
            return None, ("missing", str(error))
        except ImageDecodeError as error:
            return None, ("corrupt", str(error))

    bar = tqdm(total=len(todo), desc="prepare", unit="img", disable=not progress,
               file=sys.stderr)
    last_commit = time.monotonic()
    with open(images_path, "ab") as images_file, open(reports_path, "ab") as reports_file, \
            concurrent.futures.ThreadPoolExecutor(workers) as pool:
        try:
            pending = []
            queue = iter(todo)
            while True:
                while len(pending) < 4 * workers:
                    k = next(queue, None)
                    if k is None:
                        break
                    if not reports[k].strip():
                        pending.append((k, None))
                    else:
                        pending.append((k, pool.submit(load, k)))
                if not pending:
                    break
                k, future = pending.pop(0)
                if future is None:
                    skip(k, "empty_report", "the report is empty")
                else:
                    image, failure = future.result()
                    if failure is not None:
                        skip(k, *failure)
                    else:
                        _check_prepared_image(image, size, sources[k])
                        record = {"source": sources[k], "report": reports[k]}
                        if labels is not None:
                            record["labels"] = [None if np.isnan(v) else float(v)
                                                for v in np.asarray(labels[k], np.float64)]
                        line = (json.dumps(record) + "\n").encode("utf-8")
                        images_file.write(np.ascontiguousarray(image).tobytes())
                        reports_file.write(line)
                        entries[k].update(status="ok", row=rows)
                        entries[k].pop("error", None)
                        rows += 1
                        reports_bytes += len(line)
                        summary["new"] += 1
                bar.update(1)
                if time.monotonic() - last_commit >= checkpoint_seconds:
                    commit(complete=False)
                    last_commit = time.monotonic()
        except BaseException:
            for _, future in pending:
                if future is not None:
                    future.cancel()
            commit(complete=False)
            bar.close()
            raise
        commit(complete=True)
    bar.close()

    result = PrepareSummary(out_dir=out_dir, total=n, prepared=rows, kept=len(done),
                            new=summary["new"], missing=summary["missing"],
                            corrupt=summary["corrupt"], empty_report=summary["empty_report"],
                            failures=failures)
    if result.skipped:
        warnings.warn(f"prepare skipped {result.skipped} of {n} pairs: {result.missing} "
                      f"missing, {result.corrupt} corrupt, {result.empty_report} empty "
                      f"reports (listed in {index_path})", stacklevel=2)
    return result


def _check_prepared_image(image, size, source):
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or \
            image.shape != (size, size):
        raise TypeError(f"load_image({source!r}, size={size}) returned "
                        f"{_describe(image)}; expected uint8 ({size}, {size})")


def _read_index(path, missing_ok=False):
    """The index of a prepared cache, every field prepare() and PreparedDataset use
    checked for type and range (DataFileError naming the field otherwise)."""
    if not os.path.exists(path):
        if missing_ok:
            return None
        raise FileNotFoundError(f"no prepared dataset here: {path} does not exist (run "
                                f"convirt prepare first)")
    raw = read_regular_file(path, DataFileError, "a prepared-dataset index (JSON)")
    try:
        index = json.loads(raw.decode("utf-8"))
    except ValueError as error:  # also UnicodeDecodeError
        raise DataFileError(f"{path} is not a readable index ({error})") from error
    if not isinstance(index, dict) or index.get("format") != PREPARED_FORMAT:
        raise DataFileError(f"{path} is not a convirt prepared-dataset index")
    if index.get("version") != PREPARED_VERSION:
        raise DataFileError(f"{path} has format version {index.get('version')}; this "
                            f"convirt reads version {PREPARED_VERSION}")

    def fail(field, expected):
        value = repr(index.get(field))
        raise DataFileError(f"{path}: field {field!r} must be {expected}, got "
                            f"{value[:60]}")

    def integer(value, low, high=None):
        return (isinstance(value, int) and not isinstance(value, bool) and value >= low
                and (high is None or value <= high))

    if not integer(index.get("size"), 1, _MAX_PREPARED_SIZE):
        fail("size", f"an integer in [1, {_MAX_PREPARED_SIZE}]")
    for field in ("rows", "reports_bytes"):
        if not integer(index.get(field), 0):
            fail(field, "an integer >= 0")
    if not isinstance(index.get("complete"), bool):
        fail("complete", "true or false")
    names = index.get("label_names")
    if names is not None and not (isinstance(names, list) and
                                  all(isinstance(name, str) for name in names)):
        fail("label_names", "null or a list of strings")
    entries = index.get("entries")
    if not isinstance(entries, list):
        fail("entries", "a list")
    for k, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("source"), str)
                and isinstance(entry.get("status"), str)
                and integer(entry.get("occurrence", 0), 0)
                and (entry["status"] != "ok"
                     or integer(entry.get("row"), 0, index["rows"] - 1))):
            raise DataFileError(f"{path}: entries[{k}] is {repr(entry)[:80]}; expected "
                                "an object with a source, a status and, when the status "
                                f"is ok, a row in [0, {index['rows']})")
    return index


def _read_reports(path, rows, nbytes, label_names=None):
    """The first `rows` records of reports.jsonl (the `nbytes` the index committed),
    each checked: {"source": str, "report": str[, "labels": L numbers or nulls]}."""
    data = read_regular_file(path, DataFileError, "a reports.jsonl file")[:nbytes]
    if len(data) < nbytes:
        raise DataFileError(f"{path} is truncated: {len(data)} bytes, the index records "
                            f"{nbytes}")
    records = []
    for line, text in enumerate(data.split(b"\n"), start=1):
        if not text:
            continue
        try:
            record = json.loads(text.decode("utf-8"))
        except ValueError as error:
            raise DataFileError(f"{path}, line {line}: not a JSON record ({error})") \
                from None
        labels = record.get("labels") if isinstance(record, dict) else None
        if not (isinstance(record, dict) and isinstance(record.get("report"), str)
                and isinstance(record.get("source"), str)
                and (label_names is None or (
                    isinstance(labels, list) and len(labels) == len(label_names)
                    and all(v is None or (isinstance(v, (int, float))
                                          and not isinstance(v, bool)) for v in labels)))):
            expected = '{"source": str, "report": str' + (
                "" if label_names is None else
                f', "labels": {len(label_names)} numbers or nulls') + "}"
            raise DataFileError(f"{path}, line {line}: expected {expected}")
        records.append(record)
    if len(records) != rows:
        raise DataFileError(f"{path} has {len(records)} reports, the index records {rows}")
    return records


class PreparedDataset(PairedDataset):
    """The cache written by :func:`prepare`, read in place.

    Parameters
    ----------
    out_dir : str or os.PathLike
    allow_incomplete : bool, default False
        Open a cache whose preparation was interrupted (its committed rows only).

    Attributes
    ----------
    images : numpy.memmap, uint8, read-only, shape (N, size, size)
        Row i pairs with ``reports[i]``; slicing and fancy indexing read from disk.
    reports : list of N str
    sources : list of N str, the original image paths
    labels : float32 (N, L) with NaN for unknown, or None
    label_names : list of L str, or None
    size : int
    index : dict, the whole index (every entry's status, including skipped ones)
    """

    def __init__(self, out_dir, allow_incomplete=False):
        out_dir = os.fspath(out_dir)
        index = _read_index(os.path.join(out_dir, _INDEX_FILE))
        if not index.get("complete") and not allow_incomplete:
            raise ValueError(f"{out_dir} is incomplete (preparation was interrupted); run "
                             f"prepare again to resume, or pass allow_incomplete=True")
        self.out_dir = out_dir
        self.index = index
        self.size = size = index["size"]
        rows = index["rows"]
        images_path = os.path.join(out_dir, _IMAGES_FILE)
        needed = rows * size * size
        actual = os.path.getsize(images_path) if os.path.exists(images_path) else -1
        if actual < needed:
            raise ValueError(f"{images_path} holds {max(actual, 0)} bytes; the index "
                             f"records {rows} images of {size}x{size} = {needed} bytes")
        if rows:
            self.images = np.memmap(images_path, dtype=np.uint8, mode="r",
                                    shape=(rows, size, size))
        else:
            self.images = np.zeros((0, size, size), np.uint8)
        records = _read_reports(os.path.join(out_dir, _REPORTS_FILE), rows,
                                index["reports_bytes"], index["label_names"])
        self.reports = [r["report"] for r in records]
        self.sources = [r["source"] for r in records]
        self.label_names = index.get("label_names")
        if self.label_names is not None:
            self.labels = np.array(
                [[np.nan if v is None else v for v in r["labels"]] for r in records],
                dtype=np.float32).reshape(rows, len(self.label_names))

    def _load(self, index, size):
        image = self.images[index]
        if size is None or size == self.size:
            return image
        return resize_center_crop(np.asarray(image), size)

    def __getitem__(self, index):
        index = self._check_index(index)
        return self.images[index], self.reports[index]

    def __repr__(self):
        return f"PreparedDataset({self.out_dir!r}, n={len(self)}, size={self.size})"


# --------------------------------------------------------------------------------------
# Batches with background prefetch
# --------------------------------------------------------------------------------------


class Batch(NamedTuple):
    """One batch: ``indices`` int64 (B,) into the dataset, ``images`` uint8
    (B, H, W), ``reports`` list of B str, ``labels`` float32 (B, L) or None."""

    indices: np.ndarray
    images: np.ndarray
    reports: list
    labels: object


class BatchLoader:
    """Batches of a dataset in a deterministic order, the next one prepared in a
    background thread while the current one is used.

    Parameters
    ----------
    dataset : PairedDataset (or anything with ``__len__``, ``reports`` and
        ``load_image``; one with a uint8 (N, H, W) ``.images`` array or memmap is
        gathered from directly)
    batch_size : int, default 32
    shuffle : bool, default True
        Epoch e uses the permutation of ``numpy.random.default_rng([seed, e])``; the
        indices inside a batch are sorted, so memmap reads go forward. Without shuffle,
        batches are consecutive and, from an array, are views (no copy).
    seed : int, default 0
    drop_last : bool, default True
        Leave out the last, smaller batch (contrastive losses prefer equal batches).
    prefetch : bool, default True
        Prepare batch k+1 in a worker thread while batch k is being used (one step
        ahead). With False everything happens in the calling thread.
    size : int, optional
        For datasets without an ``.images`` array: images are decoded and resized to
        (size, size) as they are loaded; required for such datasets.
    transform : callable, optional
        ``transform(batch) -> anything``, run in the worker thread on each Batch; the
        loader yields what it returns (augmentation that releases the GIL runs in
        parallel with the training step).

    Iterating gives one epoch: the first ``for`` loop is epoch 0, the next epoch 1, and
    so on; ``set_epoch(e)`` chooses the next one. ``len(loader)`` is the batch count.
    """

    def __init__(self, dataset, batch_size=32, shuffle=True, seed=0, drop_last=True,
                 prefetch=True, size=None, transform=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        images = getattr(dataset, "images", None)
        self._array = images if isinstance(images, np.ndarray) and images.ndim == 3 \
            else None
        if self._array is None and size is None:
            raise ValueError(f"{type(dataset).__name__} has no (N, H, W) images array; "
                             f"give size= to decode and resize images as they load, or "
                             f"prepare() the dataset first")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable; got {type(transform).__name__}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.prefetch = bool(prefetch)
        self.size = None if size is None else _check_size(size)
        self.transform = transform
        self.epoch = 0

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch):
        """The epoch the next iteration runs (its order is a function of seed, epoch)."""
        self.epoch = int(epoch)

    def batch_indices(self, epoch):
        """The list of index arrays (int64) of each batch of ``epoch``."""
        n = len(self.dataset)
        order = (np.random.default_rng([self.seed, int(epoch)]).permutation(n)
                 if self.shuffle else np.arange(n))
        count = len(self)
        batches = [order[b * self.batch_size:(b + 1) * self.batch_size]
                   for b in range(count)]
        return [np.sort(b).astype(np.int64) if self.shuffle else b.astype(np.int64)
                for b in batches]

    def load_batch(self, indices):
        """The Batch of the given dataset indices (transform not applied)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._array is not None:
            contiguous = len(indices) > 0 and \
                np.array_equal(indices, np.arange(indices[0], indices[0] + len(indices)))
            if contiguous:
                images = self._array[indices[0]:indices[0] + len(indices)]
            else:
                images = np.take(self._array, indices, axis=0)
        else:
            images = np.stack([self.dataset.load_image(int(k), size=self.size)
                               for k in indices]) if len(indices) else \
                np.zeros((0, self.size, self.size), np.uint8)
        reports = [self.dataset.reports[k] for k in indices]
        labels = getattr(self.dataset, "labels", None)
        return Batch(indices, images, reports, None if labels is None else labels[indices])

    def _make(self, indices):
        batch = self.load_batch(indices)
        return batch if self.transform is None else self.transform(batch)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return self._iterate(self.batch_indices(epoch))

    def _iterate(self, batches):
        if not self.prefetch:
            for indices in batches:
                yield self._make(indices)
            return
        with concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="convirt-prefetch") as worker:
            future = worker.submit(self._make, batches[0]) if batches else None
            try:
                for b in range(len(batches)):
                    batch = future.result()
                    future = (worker.submit(self._make, batches[b + 1])
                              if b + 1 < len(batches) else None)
                    yield batch
            finally:
                if future is not None:
                    future.cancel()

    def __repr__(self):
        return (f"BatchLoader({type(self.dataset).__name__}(n={len(self.dataset)}), "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, seed={self.seed}, "
                f"drop_last={self.drop_last}, prefetch={self.prefetch})")

