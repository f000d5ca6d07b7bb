"""The findings of synthetic patients: which of the eight labels each has, and their
details (side, size, severity), drawn with the co-occurrences seen in practice."""

import numpy as np

LABEL_NAMES = (
    "Atelectasis",
    "Cardiomegaly",
    "Edema",
    "Fracture",
    "Pleural Effusion",
    "Pneumonia",
    "Pneumothorax",
    "No Finding",
)
SIDES = ("right", "left", "bilateral")
LOBES = (
    "right upper lobe",
    "right middle lobe",
    "right lower lobe",
    "left upper lobe",
    "lingula",
    "left lower lobe",
)
# Centre (x, y) of each lobe's opacity in patient coordinates: x from the image's left


def sample_findings(n, seed=0):
    """The findings of ``n`` synthetic patients, as a dict of arrays of length n.

    Findings co-occur the way they do in practice, through three hidden causes: heart
    failure (cardiomegaly, edema, mostly bilateral effusions), infection (pneumonia,
    with a parapneumonic effusion on its side) and trauma (rib fracture, pneumothorax,
    on one side); atelectasis follows effusions and low lung volumes.

    Keys: ``labels`` (float32 (n, 8), columns as LABEL_NAMES) and, per finding, its
    details: ``atelectasis_side`` (0 right, 1 left, 2 bilateral), ``atelectasis_severity``
    (1 minimal, 2 mild, 3 moderate), ``ctr`` (cardiothoracic ratio; > 0.5 is
    cardiomegaly), ``cardiomegaly_severity`` (0 none, 1 mild, 2 moderate, 3 marked),
    ``edema_severity`` (1 mild, 2 moderate, 3 severe), ``fracture_side``,
    ``fracture_rib`` (3-9), ``fracture_healing``, ``fracture_displaced``,
    ``fracture_position`` (0 medial .. 1 lateral), ``effusion_side``,
    ``effusion_size`` (1 small, 2 moderate, 3 large), ``pneumonia_lobe`` (index into
    LOBES), ``pneumonia_severity`` (1 subtle, 2 definite, 3 extensive),
    ``pneumothorax_side``, ``pneumothorax_size`` (1 small, 2 moderate, 3 large).
    Details of absent findings are meaningless. Deterministic given (n, seed).
    """
    n = _check_count(n)
    rng = np.random.default_rng([int(seed), 0xF1])

    def chance(p):
        return rng.random(n) < p

    def choose(options, p):
        return rng.choice(np.asarray(options), size=n, p=np.asarray(p) / np.sum(p))

    heart_failure = chance(0.17)
    infection = chance(0.13)
    trauma = chance(0.07)
    low_volumes = chance(0.2)

    cardiomegaly = np.where(heart_failure, chance(0.75), chance(0.07))
    edema = np.where(heart_failure, chance(0.6), chance(0.025))
    pneumonia = np.where(infection, chance(0.9), chance(0.02))
    fracture = np.where(trauma, chance(0.7), chance(0.025))
    pneumothorax = np.where(trauma, chance(0.45), chance(0.025))

    pneumonia_lobe = choose(range(6), [0.14, 0.12, 0.3, 0.12, 0.12, 0.2])
    pneumonia_side = (pneumonia_lobe >= 3).astype(np.int64)
    pneumonia_severity = choose([1, 2, 3], [0.35, 0.45, 0.2])

    fracture_side = choose([0, 1], [0.5, 0.5])
    fracture_rib = choose(range(3, 10), [1, 1.2, 1.3, 1.3, 1.2, 1, 0.8])
    fracture_healing = chance(0.35)
    fracture_displaced = ~fracture_healing & chance(0.45)
    fracture_position = rng.uniform(0.45, 0.92, n)

    pneumothorax_side = np.where(trauma & fracture, fracture_side, choose([0, 1], [1, 1]))
    pneumothorax_size = choose([1, 2, 3], [0.55, 0.3, 0.15])

    # Effusions: bilateral in heart failure, beside the pneumonia, beside the fracture.
    effusion_from_failure = heart_failure & chance(0.55)
    effusion_from_infection = pneumonia & chance(0.25)
    effusion_from_trauma = trauma & chance(0.15)
    effusion_other = chance(0.05)
    effusion = (
        effusion_from_failure
        | effusion_from_infection
        | effusion_from_trauma
        | effusion_other
    )
    effusion_side = choose([0, 1, 2], [0.35, 0.3, 0.35])
    effusion_side = np.where(effusion_from_trauma, fracture_side, effusion_side)
    effusion_side = np.where(effusion_from_infection, pneumonia_side, effusion_side)
    effusion_side = np.where(
        effusion_from_failure, choose([0, 1, 2], [0.25, 0.12, 0.63]), effusion_side
    )
    effusion_size = choose([1, 2, 3], [0.5, 0.35, 0.15])

    atelectasis = (
        chance(0.08)
        | (effusion & chance(0.35))
        | (low_volumes & chance(0.25))
        | (pneumonia & chance(0.1))
    )
    atelectasis_side = choose([0, 1, 2], [0.3, 0.35, 0.35])
    atelectasis_side = np.where(effusion & chance(0.8), effusion_side, atelectasis_side)
    atelectasis_severity = choose([1, 2, 3], [0.3, 0.45, 0.25])

    cardiomegaly_severity = np.where(cardiomegaly, choose([1, 2, 3], [0.55, 0.32, 0.13]), 0)
    ctr = np.clip(rng.normal(0.45, 0.04, n), 0.35, 0.5)
    ctr = np.where(cardiomegaly_severity == 1, rng.uniform(0.5, 0.55, n), ctr)
    ctr = np.where(cardiomegaly_severity == 2, rng.uniform(0.55, 0.6, n), ctr)
    ctr = np.where(cardiomegaly_severity == 3, rng.uniform(0.6, 0.68, n), ctr)
    edema_severity = choose([1, 2, 3], [0.4, 0.4, 0.2])

    positives = np.stack(
        [atelectasis, cardiomegaly, edema, fracture, effusion, pneumonia, pneumothorax],
        axis=1,
    )
    labels = np.concatenate([positives, ~positives.any(axis=1, keepdims=True)], axis=1)
    return {
        "labels": labels.astype(np.float32),
        "low_volumes": low_volumes,
        "atelectasis_side": atelectasis_side,
        "atelectasis_severity": atelectasis_severity,
        "ctr": ctr.astype(np.float32),
        "cardiomegaly_severity": cardiomegaly_severity,
        "edema_severity": edema_severity,
        "fracture_side": fracture_side,
        "fracture_rib": fracture_rib,
        "fracture_healing": fracture_healing,
        "fracture_displaced": fracture_displaced,
        "fracture_position": fracture_position.astype(np.float32),
        "effusion_side": effusion_side,
        "effusion_size": effusion_size,
        "pneumonia_lobe": pneumonia_lobe,
        "pneumonia_severity": pneumonia_severity,
        "pneumothorax_side": pneumothorax_side,
        "pneumothorax_size": pneumothorax_size,
    }


def _check_count(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer; got {n!r}")
    return int(n)
