"""Built-in data: synthetic chest radiographs with reports.

:func:`synthetic_cxr` draws frontal chest-radiograph-like grayscale images
procedurally (NumPy, vectorised over images) and writes a radiology report for each
from the same sampled findings. It needs no download and is the default data of the
demo: the findings are subtle and the nuisance variation (exposure, noise, patient
position, inspiration, AP or PA projection, body habitus, breast shadows, monitoring
leads) is large, so that a randomly initialised encoder does not separate the findings
well, while a model that has learned what the reports point at can.

The eight labels are those of the CheXpert 8x200 retrieval protocol the ConVIRT paper
uses: Atelectasis, Cardiomegaly, Edema, Fracture, Pleural Effusion, Pneumonia,
Pneumothorax and No Finding.
"""

import concurrent.futures
import os
from typing import NamedTuple

import numpy as np

from .findings import LABEL_NAMES, LOBES, SIDES, _check_count, sample_findings  # noqa: F401
from .render import _render_chunk, _sample_anatomy
from .reports import write_report

__all__ = [
    "LABEL_NAMES",
    "SyntheticCXR",
    "sample_findings",
    "synthetic_8x200",
    "synthetic_cxr",
    "write_report",
]

_CHUNK = 64  # images rendered together; fixed so results do not depend on n


class SyntheticCXR(NamedTuple):
    """What :func:`synthetic_cxr` returns.

    images : uint8 (n, size, size)
    reports : list of n str, each "FINDINGS: ...\\nIMPRESSION: ..."
    labels : float32 (n, 8), 1 where the finding is present (see label_names)
    label_names : tuple of 8 str, LABEL_NAMES
    """

    images: np.ndarray
    reports: list
    labels: np.ndarray
    label_names: tuple


# --------------------------------------------------------------------------------------
# The public generator
# --------------------------------------------------------------------------------------


def synthetic_cxr(n, size=128, seed=0, difficulty=1.0, workers=None):
    """Synthetic frontal chest radiographs with their reports and labels.

    Parameters
    ----------
    n : int
        Number of images.
    size : int, default 128
        Images are (size, size); anatomy is drawn in resolution-independent
        coordinates, so a larger size gives a sharper image of the same patient.
    seed : int, default 0
        Everything (findings, anatomy, pixels, report wording) is a deterministic
        function of (n, size, seed, difficulty); the findings, labels and reports do not
        depend on ``size``.
    difficulty : float, default 1.0
        Scales the nuisance variation (position, exposure, noise) up and the
        conspicuity of the findings down; 0.5 is easier, 2 harder.
    workers : int, optional
        Rendering threads; default min(2, os.cpu_count()). Does not change the result.

    Returns
    -------
    SyntheticCXR(images, reports, labels, label_names)
        images uint8 (n, size, size); reports list of n str; labels float32 (n, 8) with
        columns LABEL_NAMES; label_names = LABEL_NAMES.

    What is drawn: body outline and soft tissue, lung fields (dark, thinner at the
    edges), vascular markings fanning from the hila, heart (tilted ellipse, width set by
    the cardiothoracic ratio) and mediastinum with aortic knob, trachea and main
    bronchi, spine with pedicles, posterior ribs (curved, with cortical margins) and
    fainter anterior ribs, clavicles, humeral heads, diaphragm domes (left lower) with a
    gastric bubble, breast shadows, monitoring leads, a position marker; then a film
    tone curve, exposure and gamma, blur, mottle and quantum noise. Findings:
    atelectasis (plate-like opacity, raised dome, mediastinal shift), cardiomegaly (CTR
    > 0.5), edema (bilateral perihilar haze, indistinct vessels, Kerley B lines), rib
    fracture (cortical gap and step, a haematoma beside an acute one, callus when
    healing), pleural effusion (meniscus, blunted angle; side and size), pneumonia
    (dense lobar consolidation with air bronchograms), pneumothorax (pleural line, a
    lucent rim without markings beyond it; side and size). Each finding is drawn large
    enough to change tens to hundreds of pixels of a 64 px view.
    """
    n = _check_count(n)
    size, difficulty = _check_size_and_difficulty(size, difficulty)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return _synthesize(sample_findings(n, seed), size, seed, difficulty, workers)


def _check_size_and_difficulty(size, difficulty):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer of at least 16; got {size!r}")
    difficulty = float(difficulty)
    if not 0.1 <= difficulty <= 10:
        raise ValueError(f"difficulty must be between 0.1 and 10; got {difficulty}")
    return int(size), difficulty


def _synthesize(findings, size, seed, difficulty, workers):
    """Anatomy, reports and images for the patients of ``findings``."""
    n = len(findings["labels"])
    anatomy = _sample_anatomy(findings, seed, difficulty)
    findings_for_text = dict(findings, leads=anatomy["leads"])
    text_rng = np.random.default_rng([int(seed), 0x7E])
    reports = [write_report(findings_for_text, k, text_rng) for k in range(n)]

    images = np.empty((n, size, size), np.uint8)

    def render(chunk):
        part = slice(chunk * _CHUNK, min((chunk + 1) * _CHUNK, n))
        rng = np.random.default_rng([int(seed), 0xB3, chunk])
        images[part] = _render_chunk(
            {k: v[part] for k, v in findings.items()},
            {k: v[part] for k, v in anatomy.items()},
            size,
            rng,
            difficulty,
        )

    # Chunks render in parallel threads (NumPy releases the GIL in its loops), each
    # with its own generator, so the result does not depend on the thread count. BLAS
    # is held to one thread: its busy-waiting threads slow small products ~50x on a
    # loaded machine.
    from threadpoolctl import threadpool_limits

    workers = min(2, os.cpu_count() or 1) if workers is None else int(workers)
    chunks = range(-(-n // _CHUNK))
    with threadpool_limits(limits=1, user_api="blas"):
        if workers > 1 and len(chunks) > 1:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                list(pool.map(render, chunks))
        else:
            for chunk in chunks:
                render(chunk)
    return SyntheticCXR(images, reports, findings["labels"], LABEL_NAMES)


def synthetic_8x200(per_category=200, size=128, seed=0, difficulty=1.0, workers=None):
    """A balanced retrieval set in the CheXpert 8x200 way: ``per_category`` synthetic
    radiographs positive for exactly one of the seven findings, for each finding, and
    ``per_category`` with none ('No Finding'), in category order (LABEL_NAMES).

    The patients are the first ones of each category among those that
    :func:`sample_findings` draws for ``seed`` (so the findings keep their natural
    details: sides, sizes, severities), drawn as :func:`synthetic_cxr` draws them. With
    equal categories the chance Precision@k of every category is 1/8, whereas in a set
    drawn at the natural prevalences single-finding 'No Finding' images are about 70%
    of the candidates and pneumothorax about 1%, so that 'No Finding' could never reach
    twice its chance. Returns a :class:`SyntheticCXR` of 8 * per_category images."""
    per_category = _check_count(per_category)
    size, difficulty = _check_size_and_difficulty(size, difficulty)
    pool = max(1024, 150 * per_category)  # the rarest single finding is ~1%
    while True:
        findings = sample_findings(pool, seed)
        positives = findings["labels"][:, :7]
        single = positives.sum(1) <= 1
        category = np.where(positives.sum(1) == 0, 7, positives.argmax(1))
        chosen = [
            np.flatnonzero(single & (category == c))[:per_category]
            for c in range(len(LABEL_NAMES))
        ]
        if all(len(c) == per_category for c in chosen):
            break
        pool *= 2
    keep = np.concatenate(chosen)
    subset = {key: value[keep] for key, value in findings.items()}
    return _synthesize(subset, size, seed, difficulty, workers)
