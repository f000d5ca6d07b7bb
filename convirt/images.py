"""Images: decoding files to grayscale uint8 and resizing them.

- :func:`decode_image` reads PNG, JPEG, TIFF, BMP (Pillow) and DICOM (pydicom, the
  optional ``convirt[dicom]`` extra) and documents how images deeper than 8 bits are
  brought to uint8.
- :func:`dicom_to_uint8` applies the DICOM display pipeline (rescale, window,
  MONOCHROME1) to a pydicom Dataset.
- :func:`resize_center_crop` resizes the shorter side and crops the centre, antialiased.
- :func:`channels_last` and :func:`check_float_range`: what an encoder accepts of an
  image batch (PyTorch's (N, C, H, W) read as a view; float intensities in [0, 1]).

A file that is not a regular file (a FIFO, a device) is refused rather than read; a
file that cannot be decoded raises :class:`ImageDecodeError` (a ValueError).
"""

import math
import os

import numpy as np

from ._io import check_regular_file
from .errors import ImageDecodeError

__all__ = [
    "DICOM_EXTENSIONS",
    "FLOAT_IMAGE_RANGE",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_SIZE",
    "ImageDecodeError",
    "channels_last",
    "check_float_range",
    "decode_image",
    "dicom_to_uint8",
    "resize_center_crop",
]

# The largest side an image is decoded or resized to: ImageAugment's (the C core's
# CV_AUGMENT_MAX_SIZE), beyond which no view can be made. A square of that side is 64 MiB
# of uint8; size=10**6 (a terabyte) would allocate until the system stops the process.
MAX_IMAGE_SIZE = 8192

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
DICOM_EXTENSIONS = (".dcm", ".dicom")


def decode_image(path, size=None):
    """Decode one image file to a grayscale uint8 array.

    Parameters
    ----------
    path : str or os.PathLike
        A PNG, JPEG, TIFF or BMP file (read with Pillow), or a DICOM file (read with
        pydicom; recognised by a ``.dcm``/``.dicom`` suffix or the ``DICM`` marker).
    size : int in [1, MAX_IMAGE_SIZE], optional
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
        raise TypeError(
            f"resize_center_crop expects a uint8 (H, W) image; got "
            f"{image.dtype} with shape {image.shape}"
        )
    if image.shape == (size, size):
        return image.copy()
    return _pil_resize_center_crop(Image.fromarray(image), size)


def _check_size(size):
    if (
        isinstance(size, bool)
        or not isinstance(size, (int, np.integer))
        or not 1 <= size <= MAX_IMAGE_SIZE
    ):
        raise ValueError(
            f"size must be a positive integer of at most {MAX_IMAGE_SIZE} (the side of "
            f"the square image); got {size!r}"
        )
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
                image.draft(
                    "L", (math.ceil(size * width / side), math.ceil(size * height / side))
                )
            image.load()
            if image.mode == "L":
                gray = image.copy()
            elif image.mode.startswith("I") or image.mode == "F":
                gray = Image.fromarray(_minmax_to_uint8(np.asarray(image)))
            else:
                gray = image.convert("L")
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        Image.DecompressionBombError,
    ) as error:
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
        raise ImportError(
            "reading DICOM files needs pydicom, an optional extra: "
            "pip install 'convirt[dicom]'"
        ) from error
    return pydicom


def _decode_dicom(path, size):
    from PIL import Image

    pydicom = _import_pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path)
    except (
        InvalidDicomError,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
    ) as error:
        raise ImageDecodeError(
            f"cannot decode {path}: not a readable DICOM file ({error})"
        ) from error
    if "PixelData" not in dataset:
        raise ImageDecodeError(f"cannot decode {path}: the DICOM file has no pixel data")
    _check_dicom_decoder(dataset, path)
    try:
        image = dicom_to_uint8(dataset)
    except ImportError:
        raise
    except Exception as error:  # pydicom raises many types for damaged pixel data
        raise ImageDecodeError(
            f"cannot decode {path}: {type(error).__name__}: {error}"
        ) from error
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
        raise ImportError(
            f"{path}: pydicom cannot decode transfer syntax {syntax.name}: {error}"
        ) from error
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise ImportError(
            f"{path}: no installed decoder for transfer syntax "
            f"{syntax.name} ({missing}); pip install 'convirt[dicom]' "
            f"provides JPEG 2000 through pylibjpeg-openjpeg"
        )


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
        raise ValueError(
            f"expected a 2-D grayscale DICOM image; got pixel data of shape {pixels.shape}"
        )

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


# ---- image batches given to an encoder ----------------------------------------------

# What Encoder.encode and embed accept of float images, which hold intensities in [0, 1]. The
# margin admits what transforms and resampling do to such images (brightness and
# contrast jitter, bilinear overshoot); values beyond it are another scale, 0-255 most
# often, which would give very different features without any error.
FLOAT_IMAGE_RANGE = (-0.5, 1.5)


def channels_last(x, in_channels):
    """An image batch as the core reads it, (N, H, W[, C]): PyTorch's (N, C, H, W) with
    C = in_channels and larger H and W becomes a transposed view (the core reads any
    strides, so nothing is copied); another (N, C, H, W) is a ValueError that says so."""
    channels_first = (
        x.ndim == 4
        and x.shape[1] in (1, 3)
        and x.shape[3] not in (1, 3)
        and min(x.shape[2:]) > x.shape[1]
    )
    if not channels_first:
        return x
    if x.shape[1] != in_channels:
        raise ValueError(
            f"images of shape {x.shape} look like PyTorch's (N, C, H, W) with "
            f"C = {x.shape[1]}, but the encoder was built for in_channels={in_channels}"
        )
    return x.transpose(0, 2, 3, 1)


def check_float_range(images):
    """ValueError when float images hold values outside FLOAT_IMAGE_RANGE (NaN and Inf
    are the core's to refuse)."""
    if images.dtype.kind != "f" or images.size == 0:
        return
    low, high = float(np.min(images)), float(np.max(images))
    if low < FLOAT_IMAGE_RANGE[0] or high > FLOAT_IMAGE_RANGE[1]:
        raise ValueError(
            f"float images must hold intensities in [0, 1], got values from {low:g} to "
            f"{high:g}: divide 0-255 images by 255 (or pass them as uint8, which the "
            "encoder scales itself)"
        )
