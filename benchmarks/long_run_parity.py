"""Long-run parity: convirt's Trainer against an independent PyTorch implementation of
the same ConVIRT recipe for hundreds of steps, with PyTorch's own float32 rounding
noise as the band. A benchmark of numbers, not of speed: it takes many minutes, prints
what it measured and decides nothing by itself.

    python benchmarks/long_run_parity.py --recipe demo --steps 500 --out docs/long_run_parity
    python benchmarks/long_run_parity.py --recipe paper --steps 500 --out docs/long_run_parity
    python benchmarks/long_run_parity.py --quick            # 20 steps of each recipe
    python benchmarks/long_run_parity.py --plot-only --out docs/long_run_parity
    # convirt alone from the same weights moved by one ulp (seeds 1, 2): more convirt
    # trajectories to set beside the PyTorch runs (PREFIX_<recipe>_convirt_<k>.json)
    python benchmarks/long_run_parity.py --recipe paper --convirt-members 1,2 \
        --batch-order legacy --steps 450 --out docs/long_run_parity

The JSON (and CSV) are rewritten every 25 steps, so an interrupted run leaves its data
up to there and --plot-only draws it. docs/LONG_RUN_PARITY.md reports the results.

Runs, all from the same initial weights (convirt's, copied into PyTorch), on the same
batches in the same order, the same augmented views (made once, by convirt's
ImageAugment inside Trainer.step, and handed to PyTorch) and the same sentences (drawn
once by convirt's sentence sampler and fed to both):
- convirt: convirt.Trainer.step, the real training path (augment, towers, loss, Adam).
- torch: PyTorch float32: the ResNet of tests/torch_resnet.py (torch.nn.functional),
  a transformers BertModel with the text tower's config and frozen layers, the heads as
  plain tensors, the loss written from the paper's formula, torch.optim.Adam (L2 weight
  decay, as convirt's decoupled_weight_decay=False). Its tokenization is transformers'
  own tokenizer for the model directory (checked equal to convirt's every step).
- torch_cl: the same with channels_last convolution weights and activations: the same
  math with other rounding (the band, part 1).
- torch_ulp: torch with every initial weight of both towers and heads moved by one
  float32 ulp up or down (the band, part 2: it also reaches the text tower, whose
  rounding channels_last leaves alone).

Recorded per step and run: the loss (and both directions), the gradient norm of the
image tower, of the trainable text tower and of the two projection heads; every
--compare-every steps, the parameters' distance from the torch run, per tower and per
tensor. Outputs, for each recipe: PREFIX_<recipe>.json (everything), PREFIX_<recipe>.csv
(one row per step) and PREFIX_<recipe>.png (loss curves, gradient norms, deviations
against the band).

convirt's deviation from torch is judged against the band, max(|torch_cl - torch|,
|torch_ulp - torch|), in windows of steps: a correct float32 implementation drifts from
PyTorch as fast as PyTorch drifts from itself under other rounding, and a slow bug
would show as a deviation that starts earlier or grows faster than the band, or as a
systematic offset in the smoothed loss once the runs have decorrelated.
"""

import argparse
import csv
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # torch_resnet: the reference ResNet

import convirt  # first: its GOMP_SPINCOUNT also reaches torch's OpenMP
from convirt.augment import AUGMENTS
from convirt.loader import BatchLoader
from convirt.reports import impressions, sample_sentences
from convirt.synthetic import synthetic_cxr
from convirt.text import minilm_path, tokenize

# The two recipes at the demo's size (ResNet-18 at 64 px, batch 32, all-MiniLM-L6-v2 with
# 3 of its 6 layers frozen: the paper freezes the lower half). Constant learning rate:
# the plateau schedule acts on validation loss per epoch and is not what is compared.
COMMON = {
    "train": 4000,
    "data_seed": 1,
    "difficulty": 1.0,
    "image_size": 64,
    "batch_size": 32,
    "depth": 18,
    "proj_hidden": 512,
    "freeze_layers": 3,
    "temperature": 0.1,
    "image_to_text_weight": 0.75,
    "weight_decay": 1e-6,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "seed": 0,
}
RECIPES = {
    # The paper's: a sentence of the whole report (findings and impression), lr 1e-4,
    # its transforms (blur scaled to the view size), d = 512, 128 tokens.
    "paper": {
        **COMMON,
        "text": "report",
        "lr": 1e-4,
        "augment": "paper",
        "proj_dim": 512,
        "max_length": 128,
    },
    # convirt/experiments/demo.py PRESETS["default"]: impression sentences, lr 3e-4, mild
    # transforms, d = 128, 64 tokens.
    "demo": {
        **COMMON,
        "text": "impression",
        "lr": 3e-4,
        "augment": "mild",
        "proj_dim": 128,
        "max_length": 64,
    },
}
TOWERS = ("image", "text", "heads")
BATCH_ORDERS = {
    # Trainer.fit's: convirt.loader.BatchLoader, a permutation per (seed, epoch), the
    # indices inside each batch sorted.
    "loader": "convirt.loader.BatchLoader: default_rng([seed, epoch]), batches sorted",
    # The order and sentence draw the script had before the package was reorganised
    # (docs/long_run_parity_paper.* were made with them): default_rng([seed, epoch,
    # 0x5EED]), batches unsorted; legacy_sample_sentences.
    "legacy": "default_rng([seed, epoch, 0x5EED]), batches unsorted, legacy sentences",
}
FLOAT32_EPS = 2.0**-23
MILESTONES = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
WINDOWS = ((1, 1), (2, 10), (11, 100), (101, 250), (251, 500), (501, 1000))


class _Pairs:
    """(images, reports) as the dataset BatchLoader reads."""

    def __init__(self, images, reports):
        self.images, self.reports = images, reports

    def __len__(self):
        return len(self.images)


# ---- convirt ----------------------------------------------------------------------------


class RecordingAugment:
    """convirt's ImageAugment, keeping a copy of the views it made for the trainer: the
    views are produced once, by convirt, and the PyTorch runs get exactly those."""

    def __init__(self, augment):
        self._augment = augment
        self.views = None

    def __getattr__(self, name):
        return getattr(self._augment, name)

    def __call__(self, images, step=0, *, out=None):
        result = self._augment(images, step=step, out=out)
        self.views = np.array(result, copy=True)
        return result


def build_convirt(recipe):
    image = convirt.Encoder.resnet18(
        1,
        proj_dim=recipe["proj_dim"],
        proj_hidden=recipe["proj_hidden"],
        seed=recipe["seed"],
    )
    text = convirt.Encoder.from_pretrained(
        minilm_path(),
        freeze_layers=recipe["freeze_layers"],
        proj_dim=recipe["proj_dim"],
        proj_hidden=recipe["proj_hidden"],
        seed=recipe["seed"] + 1,
        max_length=recipe["max_length"],
    )
    augment = RecordingAugment(
        AUGMENTS[recipe["augment"]](recipe["image_size"], seed=recipe["seed"])
    )
    loss = convirt.ContrastiveLoss(
        temperature=recipe["temperature"],
        image_to_text_weight=recipe["image_to_text_weight"],
    )
    trainer = convirt.Trainer(
        image,
        text,
        loss,
        augment=augment,
        image_size=recipe["image_size"],
        lr=recipe["lr"],
        weight_decay=recipe["weight_decay"],
        betas=recipe["betas"],
        eps=recipe["eps"],
        decoupled_weight_decay=False,
        schedule=None,
        seed=recipe["seed"],
        progress=False,
        prefetch=False,
    )
    return trainer


def convirt_tower_of(encoder_kind, name):
    return "heads" if name.startswith("projection.") else encoder_kind


def convirt_gradients(trainer):
    """{tower.name: gradient in PyTorch's layout} of the last step (trainable only)."""
    out = {}
    for kind, encoder in (("image", trainer.image_encoder), ("text", trainer.text_encoder)):
        layouts = {row[0]: row[6] for row in encoder.tensor_table}
        for name, g in encoder.gradients().items():
            if layouts[name] == "KRSC":
                g = np.transpose(g, (0, 3, 1, 2))
            out[f"{kind}.{name}"] = g
    return out


def convirt_state(trainer):
    """{kind.name: tensor in PyTorch's layout} of both towers, parameters and buffers."""
    out = {f"image.{k}": v for k, v in trainer.image_encoder.state_dict().items()}
    out.update({f"text.{k}": v for k, v in trainer.text_encoder.state_dict().items()})
    return out


def tower_norms(grads):
    """Gradient norm (float64) of each tower: image backbone, trainable text layers and
    both projection heads."""
    sums = dict.fromkeys(TOWERS, 0.0)
    for key, g in grads.items():
        kind, name = key.split(".", 1)
        g = np.asarray(g, dtype=np.float64)
        sums[convirt_tower_of(kind, name)] += float(np.vdot(g, g))
    return {tower: math.sqrt(s) for tower, s in sums.items()}


# ---- PyTorch ------------------------------------------------------------------------------


class TorchRun:
    """The recipe in PyTorch float32, written from the method, on copies of convirt's
    initial weights. channels_last: convolution weights and activations in NHWC memory
    order. perturb (a seed): every initial weight moved by one float32 ulp, up or down."""

    def __init__(self, name, trainer, recipe, *, channels_last=False, perturb=None):
        import torch
        import torch_resnet
        from transformers import AutoTokenizer, BertConfig, BertModel

        self.name, self.recipe, self.torch = name, recipe, torch
        self.resnet = torch_resnet
        self.channels_last = channels_last
        image_state = trainer.image_encoder.state_dict()
        text_state = trainer.text_encoder.state_dict()

        # Image tower and its head: a dict of tensors with torchvision's names.
        self.image = {k: torch.tensor(v) for k, v in image_state.items()}
        # Text tower: BertModel from the model directory's config, no dropout (convirt's
        # training forward is the eval-mode function, as model.eval()), no pooler.
        config = BertConfig.from_pretrained(
            minilm_path(), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
        self.bert = BertModel(config, add_pooling_layer=False)
        bert_state = {
            k: torch.tensor(v)
            for k, v in text_state.items()
            if not k.startswith("projection.")
        }
        missing, unexpected = self.bert.load_state_dict(bert_state, strict=False)
        missing = [m for m in missing if "position_ids" not in m]
        if missing or unexpected:
            raise RuntimeError(
                f"BertModel state: missing {missing}, unexpected {unexpected}"
            )
        self.bert.train()
        self.text_head = {
            k: torch.tensor(v) for k, v in text_state.items() if k.startswith("projection.")
        }
        self.tokenizer = AutoTokenizer.from_pretrained(minilm_path())

        # Frozen: the embeddings and the first freeze_layers layers, by name (checked
        # against convirt's own table, so that both freeze the same tensors).
        k = recipe["freeze_layers"]
        frozen = tuple(["embeddings."] + [f"encoder.layer.{i}." for i in range(k)])
        for pname, p in self.bert.named_parameters():
            p.requires_grad_(not pname.startswith(frozen))
        convirt_frozen = {row[0] for row in trainer.text_encoder.tensor_table if row[5]}
        torch_frozen = {n for n, p in self.bert.named_parameters() if not p.requires_grad}
        if convirt_frozen != torch_frozen:
            raise RuntimeError(f"frozen tensors differ: {convirt_frozen ^ torch_frozen}")

        with torch.no_grad():
            groups = (self.image, self.text_head, dict(self.bert.named_parameters()))
            if perturb is not None:
                generator = torch.Generator().manual_seed(perturb)
                for group in groups:
                    for pname, p in group.items():
                        if pname.endswith(("running_mean", "running_var")):
                            continue
                        up = torch.rand(p.shape, generator=generator) < 0.5
                        p.copy_(torch.nextafter(p, torch.where(up, torch.inf, -torch.inf)))
            if channels_last:
                for pname, p in self.image.items():
                    if p.ndim == 4:
                        self.image[pname] = p.contiguous(memory_format=torch.channels_last)
        for pname, p in list(self.image.items()) + list(self.text_head.items()):
            p.requires_grad_(not pname.endswith(("running_mean", "running_var")))
        self.named_trainable = (
            [(f"image.{n}", p) for n, p in self.image.items() if p.requires_grad]
            + [(f"text.{n}", p) for n, p in self.bert.named_parameters() if p.requires_grad]
            + [(f"text.{n}", p) for n, p in self.text_head.items()]
        )
        # torch.optim.Adam's weight_decay is L2 added to the gradient (convirt's
        # decoupled_weight_decay=False); the single-tensor loop, as convirt documents.
        self.optimizer = torch.optim.Adam(
            [p for _, p in self.named_trainable],
            lr=recipe["lr"],
            betas=recipe["betas"],
            eps=recipe["eps"],
            weight_decay=recipe["weight_decay"],
            foreach=False,
        )
        mean, std = trainer.image_encoder.normalization
        self.mean, self.std = float(mean[0]), float(std[0])
        self.last_grads = None

    def load_adam_state(self, trainer):
        """Adam's moments and step count from convirt's optimizer, so that this run,
        built from the trainer's current weights, continues exactly where convirt is."""
        torch = self.torch
        state = trainer.optimizer.state_dict()
        moments, base = {}, 0
        for kind, encoder, size in (
            ("image", trainer.image_encoder, state["sizes"][0]),
            ("text", trainer.text_encoder, state["sizes"][1]),
        ):
            start = encoder.trainable_offset
            for name, shape, offset, count, is_buf, frozen, layout in encoder.tensor_table:
                if is_buf or frozen:
                    continue
                at = base + offset - start
                for which in ("exp_avg", "exp_avg_sq"):
                    m = state[which][at : at + count]
                    if layout == "KRSC":
                        k, c, r, q = shape
                        m = m.reshape(k, r, q, c).transpose(0, 3, 1, 2)
                    moments[(f"{kind}.{name}", which)] = np.ascontiguousarray(
                        m.reshape(shape)
                    )
            base += size
        for key, p in self.named_trainable:
            entry = {"step": torch.tensor(float(state["step"]))}
            for which in ("exp_avg", "exp_avg_sq"):
                m = torch.tensor(moments[(key, which)])
                if p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last):
                    m = m.contiguous(memory_format=torch.channels_last)
                entry[which] = m
            self.optimizer.state[p] = entry

    def tokenize(self, sentences):
        enc = self.tokenizer(
            sentences,
            padding="longest",
            truncation=True,
            max_length=self.recipe["max_length"],
            return_tensors="np",
        )
        return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)

    @staticmethod
    def head(x, p):
        """g(x) = W2 relu(W1 x + b1) + b2."""
        hidden = (x @ p["projection.0.weight"].T + p["projection.0.bias"]).clamp_min(0)
        return hidden @ p["projection.2.weight"].T + p["projection.2.bias"]

    def step(self, views, sentences):
        torch = self.torch
        ids, mask = self.tokenize(sentences)
        x = (torch.from_numpy(views)[:, None] - self.mean) / self.std  # (N, 1, S, S)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h_v = self.resnet.forward(self.image, x, self.recipe["depth"], training=True)
        v = self.head(h_v, self.image)
        ids_t, mask_t = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
        tokens = self.bert(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        h_u = tokens.masked_fill(mask_t[..., None] == 0, -torch.inf).amax(dim=1)
        u = self.head(h_u, self.text_head)
        # Bidirectional InfoNCE with cosine similarity (DESIGN.md's formula).
        v = v / v.norm(dim=1, keepdim=True)
        u = u / u.norm(dim=1, keepdim=True)
        logits = (v @ u.T) / self.recipe["temperature"]
        image_to_text = -torch.log_softmax(logits, dim=1).diagonal().mean()
        text_to_image = -torch.log_softmax(logits, dim=0).diagonal().mean()
        lam = self.recipe["image_to_text_weight"]
        loss = lam * image_to_text + (1 - lam) * text_to_image
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = {n: p.grad.detach().numpy() for n, p in self.named_trainable}
        norms = tower_norms(grads)
        self.last_grads = {n: g.copy() for n, g in grads.items()}
        self.optimizer.step()
        return {
            "loss": loss.item(),
            "image_to_text": image_to_text.item(),
            "text_to_image": text_to_image.item(),
            **{f"grad_{t}": norms[t] for t in TOWERS},
        }, (ids, mask)

    def state(self):
        out = {f"image.{k}": v.detach().numpy() for k, v in self.image.items()}
        out.update(
            {
                f"text.{k}": v.detach().numpy()
                for k, v in self.bert.state_dict().items()
                if "position_ids" not in k
            }
        )
        out.update({f"text.{k}": v.detach().numpy() for k, v in self.text_head.items()})
        return out


# ---- comparisons --------------------------------------------------------------------------


def is_buffer(key):
    return key.endswith(("running_mean", "running_var"))


def compare_states(states, initial, reference="torch", trainable=None):
    """Per tensor and per tower: ||x_run - x_ref|| / ||x_ref - x_initial||, the share of
    the training update that differs (parameters; buffers get the same with their own
    change). Frozen tensors (no update) are left out."""
    ref = states[reference]
    per_tensor, per_tower = {}, {}
    for run, state in states.items():
        if run == reference:
            continue
        tensors, num, den = {}, dict.fromkeys(TOWERS, 0.0), dict.fromkeys(TOWERS, 0.0)
        for key, r in ref.items():
            if key not in trainable and not is_buffer(key):
                continue
            r64 = np.asarray(r, np.float64)
            diff = float(np.linalg.norm(np.asarray(state[key], np.float64) - r64))
            moved = float(np.linalg.norm(r64 - initial[key]))
            tensors[key] = diff / moved if moved > 0 else (0.0 if diff == 0 else math.inf)
            if not is_buffer(key):
                kind, name = key.split(".", 1)
                tower = convirt_tower_of(kind, name)
                num[tower] += diff * diff
                den[tower] += moved * moved
        per_tensor[run] = tensors
        per_tower[run] = {t: math.sqrt(num[t] / den[t]) if den[t] else 0.0 for t in TOWERS}
    return per_tensor, per_tower


def pairwise_distances(states, trainable):
    """||w_a - w_b|| per tower (trainable parameters) for every pair of runs: each run
    should look like one more member of the PyTorch ensemble."""
    names = list(states)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            sums = dict.fromkeys(TOWERS, 0.0)
            for key in trainable:
                kind, name = key.split(".", 1)
                d = np.asarray(states[a][key], np.float64) - np.asarray(
                    states[b][key], np.float64
                )
                sums[convirt_tower_of(kind, name)] += float(np.vdot(d, d))
            out[f"{a}|{b}"] = {t: math.sqrt(v) for t, v in sums.items()}
    return out


def compare_gradients(grads, reference="torch"):
    """Per tower: ||g_run - g_ref|| / ||g_ref|| of the same step's gradients."""
    ref = grads[reference]
    out = {}
    for run, g in grads.items():
        if run == reference or g is None:
            continue
        num, den = dict.fromkeys(TOWERS, 0.0), dict.fromkeys(TOWERS, 0.0)
        for key, r in ref.items():
            kind, name = key.split(".", 1)
            tower = convirt_tower_of(kind, name)
            r64 = np.asarray(r, np.float64)
            num[tower] += float(np.sum((np.asarray(g[key], np.float64) - r64) ** 2))
            den[tower] += float(np.sum(r64 * r64))
        out[run] = {t: math.sqrt(num[t] / den[t]) if den[t] else 0.0 for t in TOWERS}
    return out


def trainable_copy(state, trainable):
    return {k: np.array(state[k], np.float32, copy=True) for k in trainable}


def sync_compare(k, before, after, losses, grads):
    """One update from the same trained state (weights, batch-norm statistics, Adam's
    moments and step count, all convirt's): loss, gradients and the update of each
    tower and tensor, convirt and the band runs each against torch.

    Per tensor, a deviation is judged against the band's and against one float32 ulp of
    the parameters (an update is the difference of two float32 parameters: for a weight
    near 1 moved by 1e-4, one ulp is 1e-3 of the update, and Adam's last rounding may
    differ by that much between two correct implementations)."""
    out = {
        "step": k,
        "loss": losses,
        "loss_deviation": {
            r: abs(losses[r] - losses["torch"]) / abs(losses["torch"])
            for r in losses
            if r != "torch"
        },
        "gradient_deviation": compare_gradients(grads),
    }
    ref = {
        key: after["torch"][key].astype(np.float64) - before["torch"][key]
        for key in before["torch"]
    }
    floor = {}
    for key, r in ref.items():
        rr = float(np.linalg.norm(r))
        ulp = float(
            np.linalg.norm(np.spacing(np.abs(after["torch"][key])).astype(np.float64))
        )
        floor[key] = ulp / rr if rr else 0.0
    update, tensors, grad_tensors, ulps = {}, {}, {}, {}
    for run in before:
        if run == "torch":
            continue
        num, den, per, per_grad = (
            dict.fromkeys(TOWERS, 0.0),
            dict.fromkeys(TOWERS, 0.0),
            {},
            {},
        )
        for key, r in ref.items():
            d = after[run][key].astype(np.float64) - before[run][key] - r
            dd, rr = float(np.vdot(d, d)), float(np.vdot(r, r))
            kind, name = key.split(".", 1)
            tower = convirt_tower_of(kind, name)
            num[tower] += dd
            den[tower] += rr
            per[key] = math.sqrt(dd / rr) if rr else 0.0
            g, g_ref = (
                np.asarray(grads[run][key], np.float64),
                np.asarray(grads["torch"][key], np.float64),
            )
            norm = float(np.linalg.norm(g_ref))
            per_grad[key] = float(np.linalg.norm(g - g_ref)) / norm if norm else 0.0
        update[run] = {t: math.sqrt(num[t] / den[t]) if den[t] else 0.0 for t in TOWERS}
        tensors[run], grad_tensors[run] = per, per_grad
        if run == "convirt":  # the largest element-wise difference, in ulps
            for key in ref:
                a, b = after["convirt"][key], after["torch"][key]
                ulps[key] = float(
                    np.max(
                        np.abs(a.astype(np.float64) - b)
                        / np.spacing(np.abs(b)).astype(np.float64)
                    )
                )
    out["update_deviation"] = update
    band = [r for r in tensors if r != "convirt"]

    def worst(per_run, with_floor):
        rows = []
        for key, ours in per_run["convirt"].items():
            widest = max(per_run[b][key] for b in band)
            bound = max(widest, floor[key] if with_floor else 0.0, 1e-6)
            rows.append((ours / bound, key, ours, widest))
        rows.sort(reverse=True)
        return rows

    updates = worst(tensors, True)
    out["worst_update_tensors"] = [
        {
            "tensor": key,
            "ratio": q,
            "convirt": v,
            "band": w,
            "one_ulp": floor[key],
            "max_ulps": ulps[key],
        }
        for q, key, v, w in updates[:5]
    ]
    out["update_tensors_beyond_bound"] = sum(q > 1 for q, *_ in updates)
    gradients = worst(grad_tensors, False)
    out["worst_gradient_tensors"] = [
        {"tensor": key, "ratio": q, "convirt": v, "band": w}
        for q, key, v, w in gradients[:5]
    ]
    out["gradient_tensors_beyond_band"] = sum(q > 1 for q, *_ in gradients)
    out["tensors"] = len(ref)
    out["per_tensor"] = {
        "update": tensors,
        "gradient": grad_tensors,
        "one_ulp": floor,
        "convirt_max_ulps": ulps,
    }
    return out


# ---- the run ------------------------------------------------------------------------------


def machine():
    import platform

    import torch

    info = convirt.config()
    return {
        "convirt": info["convirt_version"],
        "blis": info["blis_version"],
        "blis_kernel_set": info["blis_arch"],
        "cpu": info["cpu_features"],
        "threads": info["num_threads"],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def load_data(recipe):
    data = synthetic_cxr(
        recipe["train"],
        size=recipe["image_size"],
        seed=recipe["data_seed"],
        difficulty=recipe["difficulty"],
    )
    texts = list(data.reports) if recipe["text"] == "report" else impressions(data.reports)
    return data.images, texts


_MASK64 = (1 << 64) - 1
_SENTENCE_STREAM = 0x53454E54454E4345


def _mix64(x):
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def legacy_sample_sentences(reports, seed, step, indices):
    """The sentence draw of convirt.text.sample_sentences before the package was
    reorganised (a Python counter-based uniform of (seed, mix64(step ^ tag), index)
    over the same candidate sentences), which docs/long_run_parity_paper.* were made
    with; the current sampler draws convirt._core.random_uniform(seed ^ tag, step,
    index) instead, so the same (seed, step, index) picks other sentences."""
    from convirt.reports import candidate_sentences

    stream = _mix64((int(step) ^ _SENTENCE_STREAM) & _MASK64)
    out = []
    for report, index in zip(reports, indices):
        sentences = candidate_sentences(report)
        x = _mix64((int(seed) + 0x9E3779B97F4A7C15) & _MASK64)
        x = _mix64(x ^ ((stream + 0x632BE59BD9B4E019) & _MASK64))
        x = _mix64(x ^ ((int(index) * 0x9E3779B97F4A7C15 + 0x85EBCA6B0BD5D4C1) & _MASK64))
        u = (x >> 11) * 2.0**-53
        out.append(sentences[min(int(u * len(sentences)), len(sentences) - 1)])
    return out


def batch_plan(recipe, images, texts, order="loader"):
    """step -> (uint8 batch, its sentences): the batches in the given order (see
    BATCH_ORDERS), the sentences drawn by convirt's sampler from (seed, step, index)."""
    if order not in BATCH_ORDERS:
        raise ValueError(f"batch order must be one of {list(BATCH_ORDERS)}")
    loader = BatchLoader(
        _Pairs(images, texts),
        batch_size=recipe["batch_size"],
        seed=recipe["seed"],
        prefetch=False,
    )
    n_batches, cache = len(loader), {}

    def batches(epoch):
        if epoch not in cache:
            cache.clear()
            if order == "loader":
                cache[epoch] = loader.batch_indices(epoch)
            else:
                perm = np.random.default_rng([recipe["seed"], epoch, 0x5EED]).permutation(
                    len(images)
                )
                size = recipe["batch_size"]
                cache[epoch] = [perm[b * size : (b + 1) * size] for b in range(n_batches)]
        return cache[epoch]

    def batch_at(step):
        epoch, b = divmod(step, n_batches)
        idx = batches(epoch)[b]
        sample = sample_sentences if order == "loader" else legacy_sample_sentences
        sentences = sample(
            [texts[i] for i in idx],
            seed=recipe["seed"],
            step=step,
            indices=[int(i) for i in idx],
        )
        return np.ascontiguousarray(images[idx]), sentences

    return batch_at


def perturb_encoder(encoder, seed):
    """Every parameter (not the batch-norm statistics) moved by one float32 ulp, up or
    down at random: torch_ulp's perturbation, applied to convirt's own weights."""
    rng = np.random.default_rng(seed)
    flat = encoder.flat_parameters
    for name, shape, offset, size, is_buffer, frozen, layout in encoder.tensor_table:
        if is_buffer:
            continue
        view = flat[offset : offset + size]
        up = rng.random(size) < 0.5
        # float32 targets: with a float64 one, nextafter steps one float64 ulp, which
        # rounds back to the same float32
        target = np.where(up, np.float32(np.inf), np.float32(-np.inf)).astype(np.float32)
        view[...] = np.nextafter(view, target)


def run_convirt_member(name, steps, out_prefix, member, *, batch_order="loader", log=print):
    """convirt alone on the recipe's batches, views and sentences: member 'none' from
    the same initial weights as every other run (a replay: with the same batch order it
    must give convirt's losses of the main run bit for bit), member k (an integer) from
    those weights moved by one ulp (seed k). Per step: the loss and the gradient norm of
    each tower, in PREFIX_<recipe>_convirt_<member>.json. Cheap members of a convirt
    ensemble, to set beside the PyTorch runs."""
    recipe = RECIPES[name]
    log(f"## recipe {name}: convirt member {member}, {steps} steps")
    images, texts = load_data(recipe)
    trainer = build_convirt(recipe)
    if member != "none":
        perturb_encoder(trainer.image_encoder, 2 * int(member))
        perturb_encoder(trainer.text_encoder, 2 * int(member) + 1)
    batch_at = batch_plan(recipe, images, texts, batch_order)
    records, started = [], time.time()
    result = {
        "recipe": name,
        "config": recipe,
        "steps": steps,
        "member": member,
        "batch_order": BATCH_ORDERS[batch_order],
        "machine": machine(),
        "records": records,
    }
    path = f"{out_prefix}_convirt_{member}.json"
    for step in range(steps):
        batch, sentences = batch_at(step)
        metrics = trainer.step(batch, sentences, sample_sentence=False)
        norms = tower_norms(convirt_gradients(trainer))
        records.append(
            {
                "step": step + 1,
                "loss": metrics["loss"],
                "image_to_text": metrics["image_to_text"],
                "text_to_image": metrics["text_to_image"],
                **{f"grad_{t}": norms[t] for t in TOWERS},
            }
        )
        done = step + 1
        if done % 25 == 0 or done == steps:
            result["seconds"] = time.time() - started
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=1)
            os.replace(tmp, path)
            log(
                f"step {done:4d}: convirt member {member} loss {metrics['loss']:.5f} "
                f"({(time.time() - started) / 60:.1f} min)"
            )
    return result


def run_recipe(
    name,
    steps,
    out_prefix,
    *,
    ulp=True,
    compare_every=10,
    sync_at=(),
    free_runs=True,
    batch_order="loader",
    log=print,
):
    """Train convirt for `steps` steps beside the free-running PyTorch runs (unless
    free_runs is False) and, before each update k in sync_at, check that one update
    from convirt's current state is the same in PyTorch (see sync_compare)."""
    import torch

    recipe = RECIPES[name]
    torch.manual_seed(0)
    log(f"## recipe {name}: {steps} steps; {json.dumps(recipe)}")
    images, texts = load_data(recipe)

    trainer = build_convirt(recipe)

    def torch_runs():
        runs = {
            "torch": TorchRun("torch", trainer, recipe),
            "torch_cl": TorchRun("torch_cl", trainer, recipe, channels_last=True),
        }
        if ulp:
            runs["torch_ulp"] = TorchRun("torch_ulp", trainer, recipe, perturb=1)
        return runs

    runs = torch_runs()
    trainable = {key for key, _ in runs["torch"].named_trainable}
    initial = {k: np.asarray(v, np.float64) for k, v in runs["torch"].state().items()}
    if not free_runs:
        runs = {}
    names = ["convirt", *runs]
    sync_checks = []

    batch_at = batch_plan(recipe, images, texts, batch_order)
    records = {run: [] for run in names}
    state_dev, grad_dev, tensor_dev, pairwise = [], [], {}, []
    seconds = dict.fromkeys(names, 0.0)
    started = time.time()
    result = {
        "recipe": name,
        "config": recipe,
        "steps": steps,
        "machine": machine(),
        "runs": names,
        "records": records,
        "state_deviation": state_dev,
        "gradient_deviation": grad_dev,
        "tensor_deviation": tensor_dev,
        "pairwise_distance": pairwise,
        "sync_checks": sync_checks,
        "seconds": seconds,
        "batch_order": BATCH_ORDERS[batch_order],
    }
    for step in range(steps):
        batch, sentences = batch_at(step)
        synced = None
        if step + 1 in sync_at:
            synced = torch_runs()
            for run in synced.values():
                run.load_adam_state(trainer)
            before = {
                "convirt": trainable_copy(convirt_state(trainer), trainable),
                **{r: trainable_copy(run.state(), trainable) for r, run in synced.items()},
            }

        t0 = time.perf_counter()
        metrics = trainer.step(batch, sentences, sample_sentence=False)
        seconds["convirt"] += time.perf_counter() - t0
        views = trainer.augment.views
        grads = {"convirt": convirt_gradients(trainer)}
        norms = tower_norms(grads["convirt"])
        records["convirt"].append(
            {
                "step": step + 1,
                "loss": metrics["loss"],
                "image_to_text": metrics["image_to_text"],
                "text_to_image": metrics["text_to_image"],
                **{f"grad_{t}": norms[t] for t in TOWERS},
            }
        )
        ids, mask = tokenize(
            trainer.text_encoder.tokenizer, sentences, max_length=recipe["max_length"]
        )
        for run_name, run in runs.items():
            t0 = time.perf_counter()
            record, (torch_ids, torch_mask) = run.step(views, sentences)
            seconds[run_name] += time.perf_counter() - t0
            if not (np.array_equal(ids, torch_ids) and np.array_equal(mask, torch_mask)):
                raise RuntimeError(
                    f"step {step + 1}: transformers' tokenization differs from convirt's"
                )
            records[run_name].append({"step": step + 1, **record})
            grads[run_name] = run.last_grads
        if synced is not None:
            losses = {"convirt": metrics["loss"]}
            sync_grads = {"convirt": grads["convirt"]}
            for r, run in synced.items():
                record, _ = run.step(views, sentences)
                losses[r], sync_grads[r] = record["loss"], run.last_grads
            after = {
                "convirt": trainable_copy(convirt_state(trainer), trainable),
                **{r: trainable_copy(run.state(), trainable) for r, run in synced.items()},
            }
            check = sync_compare(step + 1, before, after, losses, sync_grads)
            sync_checks.append(check)
            log(
                f"sync check, update {step + 1} from convirt's state: loss deviation "
                + ", ".join(f"{r} {v:.1e}" for r, v in check["loss_deviation"].items())
                + "; update deviation (image/text/heads) "
                + ", ".join(
                    f"{r} " + "/".join(f"{v[t]:.1e}" for t in TOWERS)
                    for r, v in check["update_deviation"].items()
                )
            )
            del synced, before, after

        done = step + 1
        if runs and (done % compare_every == 0 or done in MILESTONES or done == steps):
            states = {
                "convirt": convirt_state(trainer),
                **{r: run.state() for r, run in runs.items()},
            }
            per_tensor, per_tower = compare_states(states, initial, trainable=trainable)
            state_dev.append({"step": done, **per_tower})
            pairwise.append({"step": done, **pairwise_distances(states, trainable)})
            grad_dev.append({"step": done, **compare_gradients(grads)})
            if done in MILESTONES or done == steps:
                tensor_dev[str(done)] = per_tensor
        if runs and (done % 10 == 0 or done <= 3 or done == steps):
            losses = {r: records[r][-1]["loss"] for r in names}
            ref = losses["torch"]
            devs = " ".join(
                f"{r} {abs(losses[r] - ref) / ref:.1e}" for r in names if r != "torch"
            )
            log(
                f"step {done:4d}: loss torch {ref:.5f}, |run - torch| / torch: {devs} "
                f"({(time.time() - started) / 60:.1f} min)"
            )
        if not runs and done % 50 == 0:
            log(
                f"step {done:4d}: convirt loss {metrics['loss']:.5f} "
                f"({(time.time() - started) / 60:.1f} min)"
            )
        if done % 25 == 0 or done == steps:
            if runs:
                result["summary"] = summarize(result)
            write_outputs(result, out_prefix)
    result["wall_minutes"] = (time.time() - started) / 60
    if runs:
        result["summary"] = summarize(result)
        plot(result, out_prefix + ".png")
    write_outputs(result, out_prefix)
    return result


# ---- summary, files, figure ---------------------------------------------------------------


def series(result, run, key):
    return np.array([r[key] for r in result["records"][run]], np.float64)


def band_runs(result):
    return [r for r in result["runs"] if r not in ("convirt", "torch")]


def relative_deviations(result, key):
    """|run - torch| / |torch| per step for every run but torch."""
    ref = series(result, "torch", key)
    return {
        r: np.abs(series(result, r, key) - ref) / np.abs(ref)
        for r in result["runs"]
        if r != "torch"
    }


def moving_average(x, window):
    if len(x) < window:
        return np.full_like(x, np.mean(x))
    kernel = np.ones(window) / window
    return np.convolve(x, kernel, mode="valid")


def summarize(result):
    n = len(result["records"]["convirt"])
    out = {"steps_done": n, "loss_at": {}, "windows": [], "grad_windows": []}
    for s in MILESTONES:
        if s <= n:
            out["loss_at"][str(s)] = {
                r: result["records"][r][s - 1]["loss"] for r in result["runs"]
            }
    band = band_runs(result)

    def windows(key):
        devs = relative_deviations(result, key)
        rows = []
        for lo, hi in WINDOWS:
            if lo > n:
                break
            sl = slice(lo - 1, min(hi, n))
            ours = float(devs["convirt"][sl].max())
            bands = {r: float(devs[r][sl].max()) for r in band}
            # Below one float32 rounding of the value, a deviation means nothing.
            widest = max(max(bands.values()), FLOAT32_EPS)
            rows.append(
                {
                    "steps": [lo, min(hi, n)],
                    "convirt": ours,
                    **bands,
                    "ratio": ours / widest,
                }
            )
        return rows

    out["windows"] = windows("loss")
    for tower in TOWERS:
        out["grad_windows"].append({"tower": tower, "rows": windows(f"grad_{tower}")})
    # A slow bug that survives decorrelation: a systematic offset of the smoothed loss.
    window = min(25, n)
    ref = moving_average(series(result, "torch", "loss"), window)
    last = max(1, min(100, len(ref)))
    out["smoothed_offset"] = {
        "window": window,
        "last_points": last,
        **{
            r: float(
                np.mean(
                    moving_average(series(result, r, "loss"), window)[-last:] - ref[-last:]
                )
            )
            for r in result["runs"]
            if r != "torch"
        },
    }
    out["mean_loss_last_100"] = {
        r: float(np.mean(series(result, r, "loss")[-100:])) for r in result["runs"]
    }
    out["max_loss_ratio"] = max(w["ratio"] for w in out["windows"])
    out["mean_windows"] = mean_windows(result)
    out["smoothed_grad_windows"] = smoothed_grad_windows(result)
    out["replay"] = replay_check(result)
    out["state_windows"] = state_windows(result)
    out["tensor_milestones"] = tensor_milestones(result)
    out["step_1_relative_deviation"] = float(
        relative_deviations(result, "loss")["convirt"][0]
    )
    return out


def smoothed_grad_windows(result, window=25):
    """Per tower and window of steps, on 25-step moving averages of the gradient norm:
    the largest |g_run / g_torch - 1| of convirt and of each band run (the band
    definition applied to the smoothed norms), and the share of the window's points
    where convirt is below or above the range of all PyTorch runs."""
    n = len(result["records"]["convirt"])
    if n < window:
        return []
    band = band_runs(result)
    torch_like = [r for r in result["runs"] if r != "convirt"]
    out = []
    for tower in TOWERS:
        key = f"grad_{tower}"
        sm = {r: moving_average(series(result, r, key), window) for r in result["runs"]}
        lo = np.min([sm[r] for r in torch_like], axis=0)
        hi = np.max([sm[r] for r in torch_like], axis=0)
        rows = []
        for a, b in WINDOWS:
            # point i of the moving average ends at step i + window
            sl = slice(max(a - window, 0), max(min(b, n) - window + 1, 0))
            if a > n or sl.stop <= sl.start:
                continue
            dev = {
                r: float(np.max(np.abs(sm[r][sl] / sm["torch"][sl] - 1)))
                for r in sm
                if r != "torch"
            }
            rows.append(
                {
                    "steps": [max(a, window), min(b, n)],
                    **dev,
                    "ratio": dev["convirt"] / max(max(dev[r] for r in band), FLOAT32_EPS),
                    "convirt_below_range": float(np.mean(sm["convirt"][sl] < lo[sl])),
                    "convirt_above_range": float(np.mean(sm["convirt"][sl] > hi[sl])),
                }
            )
        out.append({"tower": tower, "rows": rows})
    return out


MEAN_WINDOWS = ((1, 10), (11, 100), (101, 200), (201, 300), (301, 400), (401, 500))


def mean_windows(result):
    """Per window of steps: the mean loss and the mean gradient norm of each tower, for
    every run and every convirt-alone member (result['members'], if any): where the
    trajectories stand once they have decorrelated, convirt's among PyTorch's."""
    records = dict(result["records"])
    for member, recs in (result.get("members") or {}).items():
        if member != "none":  # the replay is the convirt run itself
            records[f"convirt_{member}"] = recs
    rows, n = [], len(result["records"]["convirt"])
    for lo, hi in MEAN_WINDOWS:
        if lo > n:
            break
        hi = min(hi, n)
        row = {"steps": [lo, hi], "runs": {}}
        for run, recs in records.items():
            part = recs[lo - 1 : hi]
            if len(part) < hi - lo + 1:  # a member that has not reached the window's end
                continue
            row["runs"][run] = {
                key: float(np.mean([r[key] for r in part]))
                for key in ["loss"] + [f"grad_{t}" for t in TOWERS]
            }
        if row["runs"]:
            rows.append(row)
    return rows


def state_windows(result):
    """Per tower and window of steps: the largest parameter deviation of convirt from
    torch (share of the update, see compare_states) against the band's."""
    band = band_runs(result)
    rows = []
    for lo, hi in WINDOWS:
        points = [d for d in result["state_deviation"] if lo <= d["step"] <= hi]
        if not points:
            continue
        row = {"steps": [lo, min(hi, points[-1]["step"])]}
        for tower in TOWERS:
            ours = max(d["convirt"][tower] for d in points)
            widest = max(d[r][tower] for d in points for r in band)
            row[tower] = {
                "convirt": ours,
                "band": widest,
                "ratio": ours / max(widest, FLOAT32_EPS),
            }
        rows.append(row)
    return rows


def tensor_milestones(result):
    """At each milestone: how many tensors convirt is farther from torch than the
    farthest band run is, and the worst such ratios (a band below 1e-6 of the update
    counts as 1e-6: a few ulps)."""
    band = band_runs(result)
    out = {}
    for step, per_run in result["tensor_deviation"].items():
        ours = per_run["convirt"]
        ratios = []
        for key, value in ours.items():
            widest = max(per_run[r][key] for r in band)
            ratios.append((value / max(widest, 1e-6), key, value, widest))
        ratios.sort(reverse=True)
        out[step] = {
            "tensors": len(ratios),
            "convirt_beyond_band": sum(r[0] > 1 for r in ratios),
            "median_ratio": float(np.median([r[0] for r in ratios])),
            "worst": [
                {"tensor": k, "ratio": q, "convirt": v, "band": w}
                for q, k, v, w in ratios[:5]
            ],
        }
    return out


def load_members(result, prefix):
    """{member: records} of the convirt-alone runs (PREFIX_convirt_<member>.json) made
    with the result's batch order (a result without one used the legacy order)."""
    import glob

    order = result.get("batch_order", BATCH_ORDERS["legacy"])
    members = {}
    for path in sorted(glob.glob(f"{prefix}_convirt_*.json")):
        with open(path) as f:
            member = json.load(f)
        if member.get("batch_order") == order and member["records"]:
            members[str(member["member"])] = member["records"]
    return members


def replay_check(result):
    """A convirt-alone replay (member 'none') against the main run's convirt records:
    the steps it covers and how many agree bit for bit (loss and gradient norms)."""
    replay = (result.get("members") or {}).get("none")
    if not replay:
        return None
    keys = ["loss"] + [f"grad_{t}" for t in TOWERS]
    same = sum(
        all(a[k] == b[k] for k in keys)
        for a, b in zip(result["records"]["convirt"], replay)
    )
    return {"steps": len(replay), "identical_steps": same}


def write_outputs(result, prefix):
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    tmp = prefix + ".json.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=float)
    os.replace(tmp, prefix + ".json")
    keys = ["loss", "image_to_text", "text_to_image"] + [f"grad_{t}" for t in TOWERS]
    with open(prefix + ".csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step"] + [f"{r}_{k}" for r in result["runs"] for k in keys])
        for i in range(len(result["records"]["convirt"])):
            writer.writerow(
                [i + 1]
                + [
                    f"{result['records'][r][i][k]:.9g}"
                    for r in result["runs"]
                    for k in keys
                ]
            )


COLORS = {"convirt": "C3", "torch": "C0", "torch_cl": "C2", "torch_ulp": "C1"}
LABELS = {
    "convirt": "convirt",
    "torch": "PyTorch",
    "torch_cl": "PyTorch channels_last",
    "torch_ulp": "PyTorch, weights +-1 ulp",
}


def running_max(x, window):
    """max of x over the last `window` steps (a readable envelope of a noisy series)."""
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = np.max(x[max(0, i - window + 1) : i + 1])
    return out


def plot(result, path):
    """Three rows: the loss (smoothed curves of every run with the PyTorch runs'
    envelope, the smoothed difference from PyTorch, the per-step deviation against the
    band); the gradient norm of each tower (image backbone, trainable text layers,
    projection heads), smoothed, every run; the parameters' deviation per tower, the
    synchronised one-update checks and each run's smoothed gradient norm relative to
    PyTorch's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, n = result["runs"], len(result["records"]["convirt"])
    band = band_runs(result)
    torch_like = [r for r in runs if r != "convirt"]
    others = [r for r in runs if r != "torch"]
    steps = np.arange(1, n + 1)
    window = min(25, n)
    xs = np.arange(window, n + 1)
    floor = 1e-9

    def smooth(run, key):
        return moving_average(series(result, run, key), window)

    # convirt-alone members (other initial rounding of convirt's own weights), drawn
    # as far as they have got
    members = {
        m: recs
        for m, recs in (result.get("members") or {}).items()
        if len(recs) >= window and m != "none"
    }

    def draw_members(ax, key):
        for i, (member, recs) in enumerate(sorted(members.items())):
            y = moving_average(np.array([r[key] for r in recs[:n]], np.float64), window)
            label = (
                "convirt replay (same weights)"
                if member == "none"
                else f"convirt, weights +-1 ulp (seed {member})"
            )
            ax.plot(
                xs[: len(y)],
                y,
                color="C3",
                lw=1.1,
                ls=("--", ":", "-.")[i % 3],
                label=label,
            )

    def envelope(ax, key, label="range of the PyTorch runs"):
        curves = np.array([smooth(r, key) for r in torch_like])
        ax.fill_between(xs, curves.min(0), curves.max(0), color="0.8", lw=0, label=label)

    fig, axes = plt.subplots(3, 3, figsize=(18, 14))

    # (a) the loss, smoothed, every run, with the PyTorch runs' envelope
    ax = axes[0, 0]
    envelope(ax, "loss")
    for r in runs:
        ax.plot(
            xs,
            smooth(r, "loss"),
            color=COLORS[r],
            lw=1.6 if r == "convirt" else 1.1,
            label=LABELS[r],
        )
    draw_members(ax, "loss")
    lo, hi = (
        np.min([smooth(r, "loss") for r in runs]),
        np.max([smooth(r, "loss") for r in runs]),
    )
    pad = 0.15 * (hi - lo) + 1e-4
    ax.set_ylim(lo - 3 * pad, hi + 3 * pad)
    ax.set(
        title=f"(a) training loss ({window}-step moving average)",
        xlabel="step",
        ylabel="loss",
    )
    ax.legend(fontsize=8)

    # (b) the smoothed loss minus PyTorch's
    ax = axes[0, 1]
    ref = smooth("torch", "loss")
    diffs = {r: smooth(r, "loss") - ref for r in others}
    if band:
        b_lo = np.min([diffs[r] for r in band] + [np.zeros_like(ref)], axis=0)
        b_hi = np.max([diffs[r] for r in band] + [np.zeros_like(ref)], axis=0)
        ax.fill_between(xs, b_lo, b_hi, color="0.8", lw=0, label="band (PyTorch runs)")
    for r in others:
        ax.plot(
            xs,
            diffs[r],
            color=COLORS[r],
            lw=1.6 if r == "convirt" else 0.9,
            label=f"{LABELS[r]} - PyTorch",
        )
    ax.axhline(0, color="k", lw=0.5)
    ax.set(
        title=f"(b) loss minus PyTorch's ({window}-step moving average)",
        xlabel="step",
        ylabel="L - L_torch",
    )
    ax.legend(fontsize=8)

    # (c) per-step relative deviation of the loss, convirt against the band
    ax = axes[0, 2]
    devs = relative_deviations(result, "loss")
    w = 10
    if band:
        widest = np.max([devs[r] for r in band], axis=0)
        ax.fill_between(
            steps,
            floor,
            np.maximum(running_max(widest, w), floor),
            color="0.8",
            lw=0,
            label="band: max over the PyTorch runs",
        )
        for r in band:
            ax.plot(
                steps,
                np.maximum(running_max(devs[r], w), floor),
                color=COLORS[r],
                lw=0.7,
                alpha=0.8,
                label=f"|{LABELS[r]} - PyTorch|",
            )
    ax.plot(
        steps,
        np.maximum(running_max(devs["convirt"], w), floor),
        color=COLORS["convirt"],
        lw=1.4,
        label="|convirt - PyTorch|",
    )
    ax.set(
        title=f"(c) |L - L_torch| / L_torch (max over {w} steps)",
        xlabel="step",
        yscale="log",
    )
    ax.legend(fontsize=8, loc="lower right")

    # (d-f) the gradient norm of each tower
    names = {
        "image": "image backbone (ResNet-18)",
        "text": "text, trainable layers",
        "heads": "both projection heads",
    }
    for i, tower in enumerate(TOWERS):
        ax = axes[1, i]
        key = f"grad_{tower}"
        envelope(ax, key)
        ax.plot(
            steps,
            series(result, "convirt", key),
            color=COLORS["convirt"],
            lw=0.4,
            alpha=0.25,
            label="convirt, per step",
        )
        for r in runs:
            ax.plot(
                xs,
                smooth(r, key),
                color=COLORS[r],
                lw=1.6 if r == "convirt" else 1.1,
                label=LABELS[r],
            )
        draw_members(ax, key)
        ax.set(
            title=f"({'def'[i]}) gradient norm: {names[tower]}",
            xlabel="step",
            ylabel="||grad||",
            yscale="log",
        )
        ax.legend(fontsize=8)

    # (g) parameters: distance from the PyTorch run per tower, convirt against the band
    ax = axes[2, 0]
    dev = result["state_deviation"]
    if dev:
        s = [d["step"] for d in dev]
        for tower, color in zip(TOWERS, ("C0", "C2", "C4")):
            ax.plot(
                s,
                [max(d["convirt"][tower], floor) for d in dev],
                color=color,
                lw=1.5,
                label=f"convirt: {tower}",
            )
            if band:
                ax.plot(
                    s,
                    [max(max(d[r][tower] for r in band), floor) for d in dev],
                    color=color,
                    ls="--",
                    lw=1,
                    label=f"band (widest): {tower}",
                )
    ax.set(
        title="(g) parameters: ||w - w_torch|| / ||w_torch - w_0||",
        xlabel="step",
        yscale="log",
    )
    ax.legend(fontsize=8, ncol=2)

    # (h) the synchronised one-update checks
    ax = axes[2, 1]
    checks = result.get("sync_checks") or []
    if checks:
        labels, ours, widest = [], [], []
        for c in checks:
            c_band = [r for r in c["gradient_deviation"] if r != "convirt"]
            for key, short in (("gradient_deviation", "grad"), ("update_deviation", "upd")):
                for tower in TOWERS:
                    labels.append(f"{short} {tower}")
                    ours.append(max(c[key]["convirt"][tower], floor))
                    widest.append(max(max(c[key][r][tower] for r in c_band), floor))
        x = np.arange(len(labels))
        ax.bar(x - 0.2, widest, 0.4, color="0.7", label="band: widest PyTorch run")
        ax.bar(x + 0.2, ours, 0.4, color=COLORS["convirt"], label="convirt")
        ax.set_xticks(x, labels, fontsize=7, rotation=90)
        ax.set(yscale="log", ylabel="||x - x_torch|| / ||x_torch||")
        per = 2 * len(TOWERS)
        for k, c in enumerate(checks):
            if k:
                ax.axvline(k * per - 0.5, color="k", lw=0.6)
            ax.text(
                k * per + per / 2 - 0.5,
                1.02,
                f"update {c['step']}",
                ha="center",
                va="bottom",
                transform=ax.get_xaxis_transform(),
                fontsize=9,
            )
        ax.legend(fontsize=8, loc="lower left")
    ax.set_title("(h) one update from convirt's state: gradient, update", pad=16)

    # (i) each run's smoothed gradient norm relative to PyTorch's
    from matplotlib.lines import Line2D

    ax = axes[2, 2]
    styles = dict(zip(TOWERS, ("-", "--", ":")))
    for tower in TOWERS:
        ref = smooth("torch", f"grad_{tower}")
        for r in others:
            ax.plot(
                xs,
                smooth(r, f"grad_{tower}") / ref,
                color=COLORS[r],
                ls=styles[tower],
                lw=1.4 if r == "convirt" else 0.9,
            )
    ax.axhline(1, color="k", lw=0.5)
    handles = [Line2D([], [], color=COLORS[r], label=LABELS[r]) for r in others] + [
        Line2D([], [], color="k", ls=styles[t], label=t) for t in TOWERS
    ]
    ax.legend(handles=handles, fontsize=8, ncol=2)
    ax.set(
        title="(i) gradient norm / PyTorch's (moving averages)",
        xlabel="step",
    )

    m = result["machine"]
    fig.suptitle(
        f"Long-run parity, recipe '{result['recipe']}': convirt against PyTorch, "
        f"{n} of {result['steps']} steps (BLIS {m['blis_kernel_set']}, "
        f"{m['threads']} threads, torch {m['torch']})",
        fontsize=13,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_summary(result):
    s = result["summary"]
    print(f"\n### recipe {result['recipe']} ({s['steps_done']} steps)\n")
    runs = result["runs"]
    print("| step | " + " | ".join(LABELS[r] for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for step, losses in s["loss_at"].items():
        print(f"| {step} | " + " | ".join(f"{losses[r]:.6f}" for r in runs) + " |")
    band = band_runs(result)
    print(
        "\n| steps | convirt max dev | "
        + " | ".join(f"{LABELS[r]} max dev" for r in band)
        + " | ratio to band |"
    )
    print("|---|---|" + "---|" * len(band) + "---|")
    for w in s["windows"]:
        print(
            f"| {w['steps'][0]}-{w['steps'][1]} | {w['convirt']:.2e} | "
            + " | ".join(f"{w[r]:.2e}" for r in band)
            + f" | {w['ratio']:.2f} |"
        )
    print(
        "\nparameters, ||w - w_torch|| / ||w_torch - w_0|| (largest in the window), "
        "convirt / band:"
    )
    print("\n| steps | " + " | ".join(TOWERS) + " |")
    print("|---|" + "---|" * len(TOWERS))
    for row in s["state_windows"]:
        print(
            f"| {row['steps'][0]}-{row['steps'][1]} | "
            + " | ".join(f"{row[t]['convirt']:.2e} / {row[t]['band']:.2e}" for t in TOWERS)
            + " |"
        )
    print(
        "\ngradient norm per tower, 25-step moving averages: largest |g / g_torch - 1| "
        "(convirt / widest band run) and the share of points with convirt below / above "
        "the PyTorch runs' range\n"
    )
    print("| steps | " + " | ".join(TOWERS) + " |")
    print("|---|" + "---|" * len(TOWERS))
    towers = s["smoothed_grad_windows"]
    for i in range(len(towers[0]["rows"]) if towers else 0):
        cells = []
        for t in towers:
            row = t["rows"][i]
            widest = max(row[r] for r in band)
            cells.append(
                f"{row['convirt']:.3f} / {widest:.3f} ({row['convirt_below_range']:.0%} "
                f"below, {row['convirt_above_range']:.0%} above)"
            )
        steps = towers[0]["rows"][i]["steps"]
        print(f"| {steps[0]}-{steps[1]} | " + " | ".join(cells) + " |")
    for key in ["loss"] + [f"grad_{t}" for t in TOWERS]:
        names = [r for r in s["mean_windows"][0]["runs"]] if s["mean_windows"] else []
        print(f"\nmean {key} per window of steps\n")
        print("| steps | " + " | ".join(LABELS.get(r, r) for r in names) + " |")
        print("|---|" + "---|" * len(names))
        for row in s["mean_windows"]:
            print(
                f"| {row['steps'][0]}-{row['steps'][1]} | "
                + " | ".join(
                    f"{row['runs'][r][key]:.4f}" if r in row["runs"] else "-" for r in names
                )
                + " |"
            )
    if s.get("replay"):
        print(
            f"\nconvirt-alone replay: {s['replay']['identical_steps']} of "
            f"{s['replay']['steps']} steps bit-identical to the run's convirt records"
        )
    print(
        f"\nsmoothed loss offset from PyTorch (mean over the last "
        f"{s['smoothed_offset']['last_points']} points of a {s['smoothed_offset']['window']}"
        "-step moving average): "
        + ", ".join(f"{r} {s['smoothed_offset'][r]:+.4f}" for r in runs if r != "torch")
    )
    sys.stdout.flush()


def print_sync(result):
    checks = result.get("sync_checks") or []
    if not checks:
        return
    print(
        f"\n### recipe {result['recipe']}: one update from convirt's trained state "
        "(weights, batch-norm statistics, Adam moments and step)\n"
    )
    band = [r for r in checks[0]["loss_deviation"] if r != "convirt"]
    print(
        "| update | loss: convirt / band | "
        + " | ".join(f"{t} gradient: convirt / band" for t in TOWERS)
        + " | "
        + " | ".join(f"{t} update: convirt / band" for t in TOWERS)
        + " | tensors beyond band (gradient / update) | worst update: convirt / bound |"
    )
    print("|---|---|" + "---|" * (2 * len(TOWERS)) + "---|---|")
    for c in checks:
        cells = [
            (
                f"{c['loss_deviation']['convirt']:.1e} / "
                f"{max(c['loss_deviation'][r] for r in band):.1e}"
            )
        ]
        for key in ("gradient_deviation", "update_deviation"):
            cells += [
                f"{c[key]['convirt'][t]:.1e} / {max(c[key][r][t] for r in band):.1e}"
                for t in TOWERS
            ]
        if "worst_update_tensors" in c:
            worst = c["worst_update_tensors"][0]
            bound = max(worst["band"], worst["one_ulp"])
            beyond = (
                f"{c['gradient_tensors_beyond_band']} / {c['update_tensors_beyond_bound']}"
            )
        else:  # an earlier version's record: updates against the band alone
            worst = c["worst_tensors"][0]
            bound = worst["band"]
            beyond = f"- / {c['tensors_beyond_band']} (band only)"
        print(
            f"| {c['step']} | "
            + " | ".join(cells)
            + f" | {beyond} of {c['tensors']} | {worst['tensor']}: "
            f"{worst['convirt']:.1e} / {bound:.1e} |"
        )
    sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=[*RECIPES, "both"], default="both")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 steps")
    parser.add_argument(
        "--out",
        default="long_run_parity",
        help="prefix of the output files (PREFIX_<recipe>.json/.csv/.png)",
    )
    parser.add_argument(
        "--no-ulp",
        action="store_true",
        help="leave out the run with every initial weight moved by one ulp",
    )
    parser.add_argument(
        "--compare-every",
        type=int,
        default=10,
        help="compare parameters and gradients every so many steps",
    )
    parser.add_argument(
        "--sync-at",
        default="10,100,250,500",
        help="updates (comma list) before which PyTorch copies convirt's "
        "whole state and both take the same one update ('' for none)",
    )
    parser.add_argument(
        "--sync-only",
        action="store_true",
        help="train convirt alone and run only the synchronised one-update "
        "checks (writes PREFIX_<recipe>_sync.json)",
    )
    parser.add_argument(
        "--batch-order",
        choices=list(BATCH_ORDERS),
        default="loader",
        help="'loader': Trainer.fit's (BatchLoader); 'legacy': the order "
        "docs/long_run_parity_paper.* were made with",
    )
    parser.add_argument(
        "--convirt-members",
        default=None,
        help="train convirt alone, as members of a convirt ensemble (comma list: "
        "'none' for a replay from the same weights, k for weights moved by one ulp with "
        "seed k); writes PREFIX_<recipe>_convirt_<member>.json, which --plot-only draws",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--plot-only",
        action="store_true",
        help="redraw the figure and the summary from PREFIX_<recipe>.json",
    )
    args = parser.parse_args(argv)
    recipes = list(RECIPES) if args.recipe == "both" else [args.recipe]
    if args.plot_only:
        for name in recipes:
            with open(f"{args.out}_{name}.json") as f:
                result = json.load(f)
            result["members"] = load_members(result, f"{args.out}_{name}")
            result["summary"] = summarize(result)
            plot(result, f"{args.out}_{name}.png")
            print_summary(result)
            if os.path.exists(f"{args.out}_{name}_sync.json"):
                with open(f"{args.out}_{name}_sync.json") as f:
                    result = json.load(f)
            print_sync(result)
        return
    import torch

    threads = args.threads or convirt.get_num_threads()
    convirt.set_num_threads(threads)
    torch.set_num_threads(threads)
    steps = 20 if args.quick else args.steps
    compare_every = 5 if args.quick else args.compare_every
    info = machine()
    print(
        f"# Long-run parity: convirt {info['convirt']} (BLIS {info['blis']}, "
        f"{info['blis_kernel_set']}, {threads} threads) vs PyTorch {info['torch']}; "
        f"{info['cpu']}"
    )
    if args.convirt_members:
        for name in recipes:
            for member in args.convirt_members.split(","):
                run_convirt_member(
                    name,
                    steps,
                    f"{args.out}_{name}",
                    member.strip(),
                    batch_order=args.batch_order,
                )
        return
    sync_at = {int(k) for k in args.sync_at.split(",") if k.strip()}
    if args.quick:
        sync_at = {5, 20}
    for name in recipes:
        prefix = f"{args.out}_{name}" + ("_sync" if args.sync_only else "")
        result = run_recipe(
            name,
            steps,
            prefix,
            ulp=not args.no_ulp,
            compare_every=compare_every,
            sync_at=sync_at,
            free_runs=not args.sync_only,
            batch_order=args.batch_order,
        )
        if not args.sync_only:
            print_summary(result)
        print_sync(result)
        print(
            f"wrote {prefix}.json, .csv"
            + ("" if args.sync_only else ", .png")
            + f" ({result['wall_minutes']:.1f} min)"
        )


if __name__ == "__main__":
    main()
