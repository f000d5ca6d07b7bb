"""The forward and backward of one training step, for the Trainer: both towers, global
negatives over the ranks of a convirt.distributed World, micro-batches (gradient
caching), and the all-reduce of the gradients. convirt.distributed's docstring works out
why the result is the gradient of the global loss.

Micro-batches (``micro_batch=M``, gradient caching as in Gao et al., 2021). The loss
couples every pair of the batch, but the towers act on each pair alone (batch norm
aside), so the step splits in two passes over chunks of M pairs:

1. embed every chunk (training mode, the same computation as the real forward) and keep
   only its embeddings: the activations of a chunk are overwritten by the next;
2. take the loss and its gradient dL/dV, dL/dU for the whole batch (global, under MPI);
3. for each chunk again: forward with activations, then backward with its rows of
   dL/dV (dL/dU): the encoders add each chunk's parameter gradient into their flat
   gradient buffers, whose sum is the batch's gradient.

Activation memory is that of M pairs. Batch norm in training mode normalises by the
statistics of the chunk, not of the batch: with M < batch the function differs from the
one-shot batch by exactly that (without batch norm, e.g. a frozen image tower or the
text tower alone, the update equals the one-shot one to float32 noise; tests measure
both). The running statistics are updated once per chunk of pass 3 (pass 1's updates are
put back).
"""

import contextlib
import math
import time

import numpy as np

from .distributed import World, config_hash, world

__all__ = ["StepRunner", "join_world"]


def join_world(distributed, config, image, text):
    """The World a Trainer trains over: ``distributed`` None or True is the MPI world
    when launched by mpirun (else one process), False one process, or a World. Under
    MPI the configurations are compared (the same error on every rank when they
    differ) and every rank starts from rank 0's weights and batch-norm statistics
    (``config.sync_batchnorm``: StepRunner all-reduces the batch-norm sums)."""
    if distributed is False:
        return World()
    group = world() if distributed in (None, True) else distributed
    if not isinstance(group, World):
        raise TypeError(
            "distributed must be None, True, False or a convirt.distributed.World, "
            f"got {type(distributed).__name__}"
        )
    if group.size == 1:
        return group
    towers = [e for e in (image, text) if e is not None]
    group.check_same(
        "the trainer's configuration (a hash of TrainerConfig and the towers)",
        config_hash(
            {
                "config": config.to_json(),
                "towers": [(e._describe(), e.flat_parameters.size) for e in towers],
            }
        ),
    )
    for e in towers:
        group.broadcast_(e.flat_parameters)
        group.broadcast_(e.flat_buffers)
    return group


# Sentences whose frozen-text embeddings fit() keeps (about 2 KiB each at d = 512).
TEXT_CACHE_LIMIT = 200_000


class StepRunner:
    """Forward + loss + backward of the Trainer's step on one rank's local batch.

    image / text: the encoders (text None for SimCLR); loss: ContrastiveLoss; frozen:
    (freeze_image, freeze_text); group: convirt.distributed.World; micro_batch: None
    or pairs per chunk; buffer(name, shape): the Trainer's reused float32 buffers;
    sync_batchnorm: the image tower's batch-norm sums are all-reduced over the group
    during each step (and only then).
    """

    def __init__(
        self, image, text, loss, frozen, group, micro_batch, buffer, sync_batchnorm=False
    ):
        self.image, self.text, self.loss = image, text, loss
        self.freeze_image, self.freeze_text = frozen
        self.group = group
        self.micro_batch = micro_batch
        self.buffer = buffer
        self.sync_batchnorm = bool(sync_batchnorm) and group.size > 1
        self.comm_seconds = 0.0  # time spent in collectives during the last step
        # A frozen text tower's embedding of each sentence seen so far, keyed on its
        # tokens and their positions: a dict while Trainer.fit runs with freeze_text
        # (see _frozen_text), else None.
        self.text_cache = None

    @contextlib.contextmanager
    def _batchnorm_synced(self):
        """The all-reduce of the batch-norm sums installed for one step, then removed:
        the encoder used on its own afterwards (evaluation on one rank, another group)
        must not call into this group's collectives, where it would wait for ranks
        that never come."""
        if not self.sync_batchnorm:
            yield
            return
        self.image.set_batchnorm_reduce(self.group.allreduce_sum)
        try:
            yield
        finally:
            self.image.set_batchnorm_reduce(None)

    # ---- pieces ---------------------------------------------------------------------------

    def _chunks(self, n):
        m = self.micro_batch
        if m is None or m >= n:
            return [(0, n)]
        return [(lo, min(lo + m, n)) for lo in range(0, n, m)]

    @staticmethod
    def _forward(encoder, inputs, lo, hi, out):
        encoder.forward(
            *(x[lo:hi] for x in inputs), features=False, embeddings_out=out[lo:hi]
        )

    def _embed(self, encoder, inputs, n, trained, out):
        """Embeddings of the n local inputs into out (n, d). A trained tower runs in
        training mode; with one chunk its activations stay for backward()."""
        encoder.train(trained)
        chunks = self._chunks(n)
        saved = encoder.flat_buffers.copy() if trained and len(chunks) > 1 else None
        for lo, hi in chunks:
            self._forward(encoder, inputs, lo, hi, out)
        if saved is not None:  # pass 3 updates the running statistics, not this one
            encoder.flat_buffers[...] = saved
        return out

    def _frozen_text(self, ids, mask, out):
        """A frozen text tower's embeddings of the rows (ids, mask) into out (n, d), with
        one forward for the sentences not in text_cache. Exact: a row's embedding
        depends only on its own tokens and their positions (the key; padding never
        enters the computation), and the tower does not change while fit() runs. The
        cache keeps at most TEXT_CACHE_LIMIT sentences (a corpus with more computes the
        rest each time they are drawn)."""
        keys = [
            row[m != 0].tobytes() + np.flatnonzero(m).tobytes() for row, m in zip(ids, mask)
        ]
        new = list({k: i for i, k in enumerate(keys) if k not in self.text_cache}.values())
        fresh = {}
        if new:
            self.text.train(False)
            _, u = self.text.forward(ids[new], mask[new], features=False)
            fresh = {keys[i]: row for i, row in zip(new, u)}
            for key in list(fresh)[: max(0, TEXT_CACHE_LIMIT - len(self.text_cache))]:
                self.text_cache[key] = fresh[key].copy()
        for i, k in enumerate(keys):
            out[i] = fresh[k] if k in fresh else self.text_cache[k]
        return out

    def _backward(self, encoder, inputs, n, grad, scratch):
        """Parameter gradients of the local rows ``grad`` (n, d) of dL/d(embeddings),
        all-reduced over the ranks."""
        encoder.zero_grad()
        chunks = self._chunks(n)
        for lo, hi in chunks:
            if len(chunks) > 1:
                self._forward(encoder, inputs, lo, hi, scratch)
            encoder.backward(np.ascontiguousarray(grad[lo:hi]))
        t0 = time.perf_counter()
        self.group.allreduce_sum(encoder.flat_gradients[encoder.trainable_offset :])
        self.comm_seconds += time.perf_counter() - t0

    def _gather(self, local, name):
        """(K n, d) of every rank's rows (local itself on one rank)."""
        if self.group.size == 1:
            return local
        t0 = time.perf_counter()
        out = self.buffer(name, (self.group.size * len(local), local.shape[1]))
        self.group.allgather_rows(local, out)
        self.comm_seconds += time.perf_counter() - t0
        return out

    def _rows(self, full, n, offset=0):
        lo = offset + self.group.rank * n
        return full[lo : lo + n]

    # ---- the two methods ------------------------------------------------------------------

    def convirt(self, views, ids, mask, loss_call):
        """ConVIRT: images (n, ...) float32 views, token ids and mask (n, T). Returns the
        LossResult of the global batch; gradients are in the encoders (all-reduced)."""
        with self._batchnorm_synced():
            return self._convirt(views, ids, mask, loss_call)

    def _convirt(self, views, ids, mask, loss_call):
        self.comm_seconds = 0.0
        image, text, n = self.image, self.text, len(views)
        v = self._embed(
            image, (views,), n, not self.freeze_image, self.buffer("v", (n, image.proj_dim))
        )
        u = self.buffer("u", (n, text.proj_dim))
        if self.text_cache is None:
            self._embed(text, (ids, mask), n, not self.freeze_text, u)
        else:
            self._frozen_text(ids, mask, u)
        big_v, big_u = self._gather(v, "all_v"), self._gather(u, "all_u")
        gv, gu = self.buffer("gv", big_v.shape), self.buffer("gu", big_u.shape)
        result = loss_call(lambda: self.loss(big_v, big_u, grad_v=gv, grad_u=gu))
        if not math.isfinite(result.loss):
            return result
        if not self.freeze_image:
            self._backward(image, (views,), n, self._rows(gv, n), v)
        if not self.freeze_text:
            self._backward(text, (ids, mask), n, self._rows(gu, n), u)
        return result

    def simclr(self, views, loss_call):
        """SimCLR: views (2n, ...), the first view of each of the n local images, then
        the second. Globally the NT-Xent input is [first views of every rank; second
        views of every rank], the order one process has for the whole batch."""
        with self._batchnorm_synced():
            return self._simclr(views, loss_call)

    def _simclr(self, views, loss_call):
        self.comm_seconds = 0.0
        image, two_n = self.image, len(views)
        n = two_n // 2
        z = self._embed(
            image, (views,), two_n, True, self.buffer("z", (two_n, image.proj_dim))
        )
        if self.group.size == 1:
            big_z = z
        else:
            k = self.group.size
            big_z = self.buffer("all_z", (2 * k * n, z.shape[1]))
            t0 = time.perf_counter()
            self.group.allgather_rows(z[:n], big_z[: k * n])
            self.group.allgather_rows(z[n:], big_z[k * n :])
            self.comm_seconds += time.perf_counter() - t0
        gz = self.buffer("gz", big_z.shape)
        result = loss_call(lambda: self.loss.nt_xent(big_z, grad=gz))
        if not math.isfinite(result.loss):
            return result
        if self.group.size > 1:
            k = self.group.size
            local = self.buffer("gz_local", z.shape)
            local[:n] = self._rows(gz, n)
            local[n:] = self._rows(gz, n, offset=k * n)
            gz = local
        self._backward(image, (views,), two_n, gz, z)
        return result

    def evaluate(self, views, ids, mask, loss_call):
        """The loss of one validation batch, forward only (the towers in eval mode):
        ConVIRT on (views, ids, mask), SimCLR on views (2n, ...) when ids is None."""
        if ids is None:
            _, z = self.image.forward(views, features=False)
            return loss_call(lambda: self.loss.nt_xent(z, compute_grad=False))
        _, v = self.image.forward(views, features=False)
        _, u = self.text.forward(ids, mask, features=False)
        return loss_call(lambda: self.loss(v, u, compute_grad=False))
