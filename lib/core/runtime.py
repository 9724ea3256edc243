"""How the book's work uses the machine: CPU thread limits and progress bars.

Progress: a live bar (``tqdm.auto``) where someone watches it: a notebook open in JupyterLab (or
any frontend that can answer ``input()``), or a terminal. Everywhere else (:func:`batch_mode`:
papermill or nbval executing a notebook, by hand or under ``lib.pipeline.grid``; stderr
redirected to a log file; or the environment variable ``DECEPTION_SAES_BATCH=1``) a few plain log
lines instead (at each quarter and at the end), so executed notebooks store no widget's frozen
first frame ("0/75") and logs hold no carriage-return frames.

On a 2-core CPU the book's many small computations (small SAEs, per-fold probe fits, a toy
model's forward passes) run fastest single-threaded: a second thread mostly waits for the first,
and worker processes already use the second core. Every place that limits threads goes through
:func:`torch_threads` (PyTorch's intra-op pool) or :func:`blas_threads` (NumPy/SciPy BLAS).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

#: below this many parameters a model's forward pass runs single-threaded on the CPU
SMALL_MODEL_PARAMS = 50_000_000


@contextmanager
def torch_threads(n: int | None):
    """Run PyTorch with ``n`` CPU threads inside the block (``None``: leave it as it is)."""
    import torch  # lazy: lib.pipeline.grid's process (progress, batch mode) never loads torch

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


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (x86: AVX512-BF16 or AMX-BF16).

    Without them (e.g. AVX2-only x86), torch runs bfloat16 and float16 matmuls in a slow
    fallback kernel: on the 2-core AVX2 machine this book is built on, a TinyLlama-shaped forward
    pass ran several times slower in bfloat16 than in float32 (``tests/benchmarks/bench_dtype.py``).
    Returns True when the answer is unknown (not x86), so that nothing warns without cause.
    """
    import torch  # lazy: lib.pipeline.grid imports this module without torch

    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        return True
    if caps.get("architecture") not in ("x86_64", "x86", "AMD64"):
        return True
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def fast_bf16(device) -> bool:
    """Whether bfloat16 matmuls are fast on ``device`` (a torch.device): a GPU, or a CPU with
    bfloat16 instructions (:func:`cpu_has_fast_bf16`)."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())


def umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_sibling(path, suffix: str = ".tmp"):
    """A new temporary folder beside ``path`` (``.<name>.XXXX<suffix>``) with the permissions a
    plain ``mkdir`` gives (``mkdtemp`` makes folders private, 0700, and a folder renamed into
    place keeps them: run outputs and caches are ordinary files others may read)."""
    import tempfile
    from pathlib import Path

    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix))
    tmp.chmod(0o777 & ~umask())
    return tmp


BATCH_ENV = "DECEPTION_SAES_BATCH"


def kernel_frontend_answers_input() -> bool | None:
    """Inside a Jupyter kernel: whether the cell now running was sent by a frontend that can
    answer ``input()`` (JupyterLab, the classic notebook, VS Code: ``allow_stdin`` true in their
    execute requests) rather than by a batch executor (papermill's and nbval's clients send
    ``allow_stdin: false``: nobody watches, and a widget would be stored as its first frame).
    ``None`` outside a kernel (a script, a terminal IPython, pytest)."""
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has imported it
    shell = ipython.get_ipython() if ipython is not None else None
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return None
    try:
        request = kernel.get_parent("shell") or {}
    except (AttributeError, TypeError):  # ipykernel < 6
        request = {}
    content = request.get("content") or {}
    if "allow_stdin" in content:
        return bool(content["allow_stdin"])
    return bool(getattr(kernel, "_allow_stdin", True))


def batch_mode() -> bool:
    """True where nobody watches a live progress bar: ``DECEPTION_SAES_BATCH=1`` (the grid's
    ``make`` targets, ``make publish``), a notebook executed by papermill or nbval (also by hand,
    without the grid), and a process whose stderr is not a terminal (a log file, a pipe).
    ``DECEPTION_SAES_BATCH=0`` does not force live bars: it leaves the choice to the rest."""
    if os.environ.get(BATCH_ENV, "") not in ("", "0"):
        return True
    watched = kernel_frontend_answers_input()
    if watched is not None:
        return not watched
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return True


def library_bars_follow_batch_mode() -> None:
    """Switch transformers' and huggingface_hub's own bars ("Loading weights", "Writing model
    shards") off where :func:`batch_mode` holds: papermill would store a widget's first frame, a
    log one carriage-return frame per refresh. Call it before loading or saving a model."""
    if batch_mode():
        from transformers.utils import logging as hf_logging  # lazy: only where models load

        hf_logging.disable_progress_bar()


class LogProgress:
    """A progress bar for batch runs: a line when a quarter of the way is passed and at the end.

    One line per update at most (a resumed stage that skips its finished part in one update prints
    one line, not four), and the end is not printed twice.
    """

    def __init__(self, iterable=None, total=None, desc="", disable=False, **_):
        self.iterable, self.desc, self.disable = iterable, desc, disable
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.n, self.t0, self.next_quarter, self.printed = 0, time.perf_counter(), 1, None

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.disable or not self.total:
            return
        quarter = min(4, self.n * 4 // self.total)
        if quarter >= self.next_quarter:
            self._line()
            self.next_quarter = quarter + 1

    def set_postfix(self, *a, **k) -> None:
        pass

    set_postfix_str = set_postfix

    def close(self) -> None:
        if not self.disable and self.n and self.printed != self.n:
            self._line()

    def _line(self) -> None:
        total = f"/{self.total}" if self.total else ""
        took = time.perf_counter() - self.t0
        print(f"{self.desc}: {self.n}{total} done, {took:.0f} s", file=sys.stdout, flush=True)
        self.printed = self.n


def progress(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str = "",
    on: bool = True,
    **kw,
):
    """A progress bar over ``iterable`` (or counting to ``total``); silent unless ``on``: a live
    tqdm bar where someone watches it, a few log lines otherwise (:func:`batch_mode`)."""
    if batch_mode():
        return LogProgress(iterable, total=total, desc=desc, disable=not on)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not on, **kw)
