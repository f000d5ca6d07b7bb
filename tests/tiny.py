"""Tiny towers, a tokenizer, paired data, images and a report that tests build for
themselves (nothing is downloaded). tests/conftest.py offers the common ones as fixtures;
this module serves the rest (a child process, a parametrize list, other arguments)."""

import os

import numpy as np

import convirt

WORDS = [
    "the",
    "a",
    "no",
    "is",
    "are",
    "of",
    "in",
    "and",
    "with",
    "lung",
    "lungs",
    "heart",
    "size",
    "normal",
    "clear",
    "effusion",
    "pleural",
    "pneumothorax",
    "edema",
    "cardiomegaly",
    "mild",
    "small",
    "large",
    "left",
    "right",
    "base",
    "opacity",
    "consolidation",
    "pneumonia",
    "fracture",
    "rib",
    "atelectasis",
    "there",
    "seen",
    "stable",
    "unchanged",
    "possible",
    "likely",
    "bilateral",
    "silhouette",
    "enlarged",
]


def write_vocab(directory):
    """A WordPiece vocab.txt (special tokens first) in directory; returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS))
    return path


def tokenizer(directory):
    from convirt.text import load_tokenizer

    write_vocab(directory)
    return load_tokenizer(directory)


# The smallest BERT the core builds: 1 layer of 8 units, 2 heads, no tokenizer.
BERT = {
    "vocab_size": 50,
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "max_position_embeddings": 16,
    "proj_dim": 4,
    "proj_hidden": 8,
}


def bert(**changes):
    """A new tiny BERT text encoder (BERT with `changes`): features (N, 8), embeddings
    (N, 4)."""
    return convirt.Encoder.bert(**dict(BERT, **changes))


def towers(directory, seed=0, image_depth=18, freeze_layers=1, proj_dim=16):
    """A ResNet image tower and a 2-layer BERT text tower, both small."""
    image = convirt.Encoder._resnet(image_depth, 1, proj_dim, 32, seed, None)
    tok = tokenizer(directory)
    text = convirt.Encoder.bert(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        freeze_layers=freeze_layers,
        proj_dim=proj_dim,
        proj_hidden=32,
        seed=seed + 1,
        tokenizer=tok,
        max_length=32,
    )
    return image, text


def pairs(n, size=32, seed=0):
    """n uint8 images (n, size, size) and n two-sentence reports."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    templates = [
        "the heart size is normal.",
        "no pleural effusion.",
        "mild left base atelectasis.",
        "possible right pneumonia.",
        "the lungs are clear.",
        "small right pneumothorax.",
        "cardiomegaly with mild edema.",
        "no fracture is seen.",
    ]
    reports = [f"{templates[i % 8]} {templates[(3 * i + 1) % 8]}" for i in range(n)]
    return images, reports


def gradient_image(height, width, seed=0):
    """A uint8 image with structure (gradients plus noise), so resizing errors show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = (
        100 + 80 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + rng.normal(0, 10, (height, width))
    )
    return np.clip(image, 0, 255).astype(np.uint8)


# A MIMIC-CXR free-text report, with its layout (indented, blank lines between sections).
MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""
