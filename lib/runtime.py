"""How the book's work uses the machine: CPU thread limits and progress bars.

On a 2-core CPU the book's many small computations (small SAEs, per-fold probe fits, a toy
model's forward passes) run fastest single-threaded: a second thread mostly waits for the first,
and worker processes already use the second core. Every place that limits threads goes through
:func:`torch_threads` (PyTorch's intra-op pool) or :func:`blas_threads` (NumPy/SciPy BLAS).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits

#: below this many parameters a model's forward pass runs single-threaded on the CPU
SMALL_MODEL_PARAMS = 50_000_000


@contextmanager
def torch_threads(n: int | None):
    """Run PyTorch with ``n`` CPU threads inside the block (``None``: leave it as it is)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def blas_threads(n: int = 1):
    """Limit NumPy/SciPy BLAS to ``n`` threads inside a ``with`` block.

    On two shared cores a two-thread OpenBLAS made sklearn's logistic regression ~50x slower
    than one thread (measured here).
    """
    return threadpool_limits(n)


def threads_for(model) -> int | None:
    """1 for a small model on the CPU (its forward pass is many small kernels), else ``None``.

    Measured on the organism's held-out set: 0.6 s single-threaded against 3-16 s with two
    threads while another process held a core.
    """
    params = list(model.parameters())
    if not params or params[0].device.type != "cpu":
        return None
    return 1 if sum(p.numel() for p in params) < SMALL_MODEL_PARAMS else None


def progress(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str = "",
    on: bool = True,
    **kw,
):
    """A tqdm progress bar over ``iterable`` (or counting to ``total``); silent unless ``on``."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not on, **kw)
