"""Notebooks executed by papermill, each in a kernel of its own, locally or on Dask.

:func:`execute_cell` is what the grid runs for every notebook, in a thread or on a Dask worker
(it is picklable and imports what it needs; :func:`executor` gives either);
:func:`check_parameters` refuses a parameter a notebook does not declare before anything runs. Each kernel talks over IPC sockets in a private folder
rather than TCP ports, which avoids the port clash of kernels started in parallel; gets extra
environment variables (the grid's lease of the run's lock, :mod:`lib.core.runlock`); and is shut down
without the interrupt jupyter_client sends first, which made every idle kernel log
``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel``. With ``log_output`` the kernel's
stdout and stderr are streamed, each line prefixed with the notebook's output name. Every kernel
is measured while it runs (:class:`lib.pipeline.process_costs.ProcessTreeMonitor`: peak memory of the kernel and
its worker processes, the load average), read just before it shuts down.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from lib.pipeline.process_costs import ProcessTreeMonitor


class _PrefixedWriter:
    """A stream papermill writes a kernel's output to: each line prefixed with the cell's name."""

    def __init__(self, label: str, stream):
        self.label, self.stream, self._buf = label, stream, ""

    def write(self, text: str) -> None:
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            self.stream.write(f"[{self.label}] {line.rstrip(chr(13)).split(chr(13))[-1]}\n")

    def flush(self) -> None:
        self.stream.flush()


def execute_cell(
    notebook: str,
    params: dict,
    output: str,
    notebook_dir: str,
    kernel: str = "python3",
    env: dict | None = None,
    log_output: bool = False,
) -> dict:
    """Execute one notebook with papermill in its own kernel (IPC transport). Picklable for Dask.

    ``env`` is added to the kernel's environment (the grid's lease of the run's lock).
    ``log_output`` streams the kernel's stdout and stderr, prefixed with the output's name.
    Returns ``{"ok": bool, "seconds": float, "error": str, "usage": dict}`` (``usage``: the
    kernel's memory and the load, :meth:`lib.pipeline.process_costs.ProcessTreeMonitor.stop`); never raises for a
    notebook error.
    """
    import papermill as pm
    from jupyter_client.manager import AsyncKernelManager
    from papermill.exceptions import PapermillExecutionError

    sockets = tempfile.mkdtemp(prefix="kernel-")
    extra_env = dict(env or {})
    monitor, usage = ProcessTreeMonitor(), {}

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            kw.setdefault("transport", "ipc")
            super().__init__(**kw)
            self.ip = str(Path(sockets) / "ipc")

        async def _async_pre_start_kernel(self, **kw):
            kw["env"] = {**kw.get("env", os.environ), **extra_env}
            return await super()._async_pre_start_kernel(**kw)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            await super()._async_launch_kernel(kernel_cmd, **kw)
            monitor.start(self.provisioner.pid)

        async def shutdown_kernel(self, now: bool = False, restart: bool = False):
            usage.update(monitor.stop())  # the kernel's VmHWM is readable until it exits
            await super().shutdown_kernel(now=now, restart=restart)

        async def _async_interrupt_kernel(self):
            # jupyter_client interrupts every kernel before shutting it down; an idle kernel
            # then logs "KeyboardInterrupt caught in kernel". A finished notebook needs no
            # interrupt: shut down directly.
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    label = Path(output).stem
    streams = (
        {
            "log_output": False,
            "stdout_file": _PrefixedWriter(label, sys.stdout),
            "stderr_file": _PrefixedWriter(label, sys.stderr),
        }
        if log_output
        else {}
    )
    t0 = time.time()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(
            str(Path(notebook_dir) / f"{notebook}.ipynb"),
            output,
            parameters=params,
            kernel_name=kernel,
            progress_bar=False,
            # the kernel starts in notebook_dir; papermill's own cwd= would chdir this process,
            # which races when the grid runs notebooks in threads (a worker restores the other's
            # directory and leaves the process there)
            resources={"metadata": {"path": str(Path(notebook_dir))}},
            kernel_manager_class=IPCKernelManager,
            **streams,
        )
    except PapermillExecutionError as e:
        error = f"cell {e.cell_index}: {e.ename}: {e.evalue}"
    except Exception as e:  # kernel died, notebook unreadable, ...
        error = f"{type(e).__name__}: {e}"
    else:
        error = ""
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    usage = usage or monitor.stop()
    return {"ok": not error, "seconds": time.time() - t0, "error": error, "usage": usage}


def check_parameters(cells, notebook_dir: Path) -> None:
    """Fail before running anything when a cell (``.notebook``, ``.params``) passes a name its
    notebook's parameters cell does not declare."""
    import papermill as pm

    declared: dict[str, set[str]] = {}
    problems = []
    for c in cells:
        if c.notebook not in declared:
            declared[c.notebook] = set(
                pm.inspect_notebook(str(notebook_dir / f"{c.notebook}.ipynb"))
            )
        unknown = sorted(set(c.params) - declared[c.notebook])
        if unknown:
            problems.append(
                f"{c.notebook}: unknown parameter(s) {unknown}; declared: {sorted(declared[c.notebook])}"
            )
    if problems:
        raise ValueError(
            "grid parameters do not match the notebooks' parameters cells:\n  "
            + "\n  ".join(problems)
        )


def executor(workers: int, dask: str | None):
    """``(submit, shutdown)``: a thread pool of ``workers``, or a Dask client (``"local"`` starts a
    ``LocalCluster`` on loopback; else a scheduler address)."""
    if dask:
        from dask.distributed import Client, LocalCluster

        if dask == "local":
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
            client = Client(cluster)
        else:
            cluster, client = None, Client(dask)

        def shutdown():
            client.close()
            if cluster is not None:
                cluster.close()

        return (lambda fn, *a: client.submit(fn, *a, pure=False)), shutdown
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    return pool.submit, lambda: pool.shutdown(wait=True)


def completed(futures: dict, dask: str | None):
    """The futures of :func:`executor` as they finish."""
    if dask:
        from dask.distributed import as_completed as dask_as_completed

        return dask_as_completed(list(futures))
    return as_completed(futures)
