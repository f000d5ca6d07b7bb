"""Data-parallel training over MPI (mpi4py on Open MPI, launched with ``mpirun``).

``world()`` is the process group the Trainer uses: the MPI world when the process was
started by ``mpirun`` with more than one rank, otherwise a group of one that needs no
MPI at all (mpi4py is never imported then, and training is exactly what it is without
this module). Launch::

    mpirun -np 4 convirt pretrain cache/ run/ --batch-size 128
    mpirun -np 4 python my_script.py          # Trainer(...) finds the world by itself
    # as root (containers, CI), or with more ranks than cores:
    mpirun -np 4 --allow-run-as-root --oversubscribe python my_script.py

What a step does on K ranks (convirt.step holds the code; the algebra is here).

Global negatives, option (a). Rank r holds b pairs of the global batch of B = K b pairs
(rows r b .. r b + b - 1 of it) and embeds them: v_r, u_r (b, d). All-gather gives every
rank the same V, U (B, d) in rank order, which is exactly what one process embedding
the B pairs would hold. Every rank then runs the one ContrastiveLoss kernel on the whole
(V, U): the loss L = (1/B) sum_i [lambda l_i(v->u) + (1 - lambda) l_i(u->v)] is the
paper's loss over the global batch, and its gradients dL/dV, dL/dU (B, d) are the
complete gradients of L: an embedding v_j appears in row j of the similarity matrix
S = V U^T / tau (through l_j(v->u)) and in column j (through every l_i(u->v)), and the
kernel's dL/dV sums both. Rank r keeps rows r b .. r b + b - 1, the gradient of L with
respect to its own embeddings, with no further communication. (Option (b), open_clip's
local loss, computes only rank r's rows and columns of S, b x B instead of B x B, and
must then sum the gradients with respect to the gathered embeddings back to their owners
with a reduce-scatter of B x d. Option (a) costs 3 GEMMs of B x B x d on every rank:
for B = 256, d = 512 that is 0.2 GFLOP, about 1 ms, against about 25 s of tower work
per step of 32 pairs per rank at the paper's configuration; it grows as K^2 and passes
1% of the tower work near B = 2,500 pairs (docs/DISTRIBUTED.md), where (b) would be
the next step.)

Parameter gradients. Backpropagating dL/dv_r through rank r's towers gives
G_r = sum_{i on rank r} (dL/dv_i) (dv_i/dtheta) + (the same for u). Because L is
already the global mean (the 1/B is inside dL/dV), dL/dtheta = sum_r G_r: the flat
gradient buffer of each encoder is all-reduced with SUM in place (one MPI call per
buffer, on the NumPy view of the encoder's own memory, no copy) and the scale is 1, not
1/K (DDP's 1/K belongs to a per-rank mean loss, which this is not). Every rank then has
the same gradient and applies the same Adam step, so the parameters stay identical
without being sent again. The learnable temperature's gradient comes from the global
loss, already the same on every rank.

Batch norm. With per-rank statistics (the default, as PyTorch DDP) dv_i/dtheta is that
of rank r's b images, so sum_r G_r is the gradient of a slightly different function
than one process's; with ``sync_batchnorm=True`` the ResNet's batch statistics
(count, sum, sum of squares) and the backward's per-channel sums are all-reduced inside
the core (through a hook the binding calls back), so K ranks compute what one process
computes on the B images.

Failure. An exception that leaves a rank's script (uncaught) is printed with the rank,
then ``MPI_Abort`` ends every rank: the others never wait forever in a collective.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback

import numpy as np

__all__ = ["World", "config_hash", "launched_size", "world"]

# Environment variables the MPI launchers set, checked before importing mpi4py (which
# would initialise MPI, and fail when it is absent): Open MPI, then PMI/PMIx (MPICH,
# Slurm).
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")
_LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")


def launched_size():
    """The world size the launcher announced in the environment (1 when none did)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


class World:
    """A process group: ``rank``, ``size``, ``local_size`` (ranks on this machine) and
    the collectives a training step needs. The group of one (``World()``) does nothing
    in each of them; ``World(comm)`` wraps an mpi4py communicator."""

    def __init__(self, comm=None):
        self.comm = comm
        if comm is None:
            self.rank, self.size, self.local_size = 0, 1, 1
            return
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        from mpi4py import MPI

        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = local.Get_size()
        local.Free()

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size}, local_size={self.local_size})"

    @property
    def distributed(self):
        return self.size > 1

    def allreduce_sum(self, array):
        """Sum ``array`` (a C-contiguous float32 or float64 NumPy array, e.g. a view of
        an encoder's flat gradient buffer) over the ranks, in place: one MPI call."""
        if self.comm is None or self.size == 1 or array.size == 0:
            return array
        from mpi4py import MPI

        if not array.flags.c_contiguous:
            raise ValueError("allreduce_sum needs a C-contiguous array (no copy is made)")
        self.comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
        return array

    def allgather_rows(self, local, out):
        """Rows of every rank's ``local`` (b, d) into ``out`` (K b, d), in rank order."""
        if self.size == 1:
            out[...] = local
            return out
        self.comm.Allgather(np.ascontiguousarray(local), out)
        return out

    def allgather_object(self, value):
        if self.size == 1:
            return [value]
        return self.comm.allgather(value)

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    def broadcast_(self, array, root=0):
        """``array`` of rank ``root`` copied into ``array`` of every rank, in place."""
        if self.size > 1 and array.size:
            self.comm.Bcast(array, root=root)
        return array

    def check_same(self, what, value):
        """Raise ValueError on every rank (the same message) unless ``value`` (a str)
        is the same on every rank."""
        values = self.allgather_object(value)
        if any(v != values[0] for v in values):
            differ = [r for r, v in enumerate(values) if v != values[0]]
            raise ValueError(
                f"{what} differs across the {self.size} ranks: rank(s) {differ} differ "
                f"from rank 0 ({values[0]!r} there, {values[differ[0]]!r} on rank "
                f"{differ[0]}); every rank must run the same configuration"
            )

    def abort(self, message, code=1):
        """Print ``message`` with this rank and end every rank of the job."""
        sys.stderr.write(f"[convirt rank {self.rank}/{self.size}] {message}\n")
        sys.stderr.flush()
        if self.comm is not None:
            self.comm.Abort(code)
        raise SystemExit(code)


def config_hash(settings):
    """A short hash of a JSON-able dict (the trainer's configuration, fit's settings)."""
    text = json.dumps(settings, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_WORLD = None


def world():
    """The process group of this run (created once): the MPI world when launched by
    mpirun with more than one rank, else the group of one. Under MPI it also sets
    the threads per rank (cores / ranks on this machine, unless OMP_NUM_THREADS is set
    or set_num_threads() was called first)
    and ends the job on an uncaught exception (see the module's docstring)."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if launched_size() <= 1:
        _WORLD = World()
        return _WORLD
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(
            f"this process was started by an MPI launcher with {launched_size()} ranks "
            "but mpi4py is not installed: pip install 'convirt[mpi]'"
        ) from error
    _WORLD = World(MPI.COMM_WORLD)
    if _WORLD.size > 1:
        _set_threads(_WORLD)
        _install_excepthook(_WORLD)
    return _WORLD


def _set_threads(group):
    from . import _core

    cores = os.cpu_count() or 1
    try:
        bound = len(os.sched_getaffinity(0))  # mpirun may bind each rank to its cores
    except AttributeError:
        bound = cores
    if "OMP_NUM_THREADS" in os.environ or _core.get_num_threads() != bound:
        return  # chosen by the user (OMP_NUM_THREADS, set_num_threads)
    _core.set_num_threads(max(1, min(bound, cores // max(1, group.local_size))))


def _install_excepthook(group):
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, value, tb)
        text = "".join(traceback.format_exception(kind, value, tb)).rstrip()
        group.abort(f"failed; ending the job (MPI_Abort):\n{text}")

    sys.excepthook = hook


def describe():
    """rank, world size and local ranks for convirt.config(), without initialising MPI
    when the process was not launched by mpirun."""
    if _WORLD is None and launched_size() <= 1:
        return {"mpi_rank": 0, "mpi_world_size": 1, "mpi_local_ranks": 1}
    group = world()
    return {
        "mpi_rank": group.rank,
        "mpi_world_size": group.size,
        "mpi_local_ranks": group.local_size,
    }
