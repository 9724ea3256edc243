"""What a stage costs the machine: wall time, peak resident memory, disk written, load.

:class:`ProcessTreeMonitor` watches one process and its descendants (a notebook's kernel and the
worker processes it starts) from a thread: every ``interval`` seconds it sums their resident
memory (``/proc/<pid>/statm``) and reads the 1-minute load average; at :meth:`~ProcessTreeMonitor.stop`
it reads the root's own high-water mark (``VmHWM`` in ``/proc/<pid>/status``), which is exact,
while the tree's sum is a sample (a child living less than ``interval`` can be missed).
:func:`dir_bytes` is the disk a folder takes (allocated blocks, so a preallocated sparse file
counts only what was written). Rows go to a CSV with :data:`COLUMNS`, one row per stage,
replaced when the stage runs again (:func:`upsert_rows`); :func:`format_table` prints them.

Linux only (``/proc``); elsewhere the memory columns stay empty. :mod:`lib.pipeline.jupyter_kernels` measures every
notebook's kernel with it; ``python -m lib.pipeline.process_costs measure`` measures any command::

    python -m lib.pipeline.process_costs measure --csv out.csv --stage build --dir data/models -- python -c "..."
    python -m lib.pipeline.process_costs table out.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

#: columns of a costs CSV (``<run>/results/rehearsal.csv``)
COLUMNS = [
    "stage",
    "status",
    "wall_s",
    "peak_rss_gb",
    "kernel_hwm_gb",
    "disk_written_mb",
    "unit",
    "units",
    "units_per_s",
    "load_avg",
    "load_mean",
    "note",
]
GB = 1024**3
MB = 1024**2
PROC = Path("/proc")


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages as ``"1.02/1.05/1.86"`` (``""`` when unknown)."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return ""


def dir_bytes(path: Path | str) -> int:
    """Bytes of disk the files under ``path`` take (allocated blocks; symlinks not followed;
    0 when ``path`` does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:  # removed while walking (a temporary file)
                continue
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total


def _ppid(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and parentheses


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.glob("[0-9]*"):
        p = int(entry.name)
        parent = _ppid(p)
        if parent is not None:
            children.setdefault(parent, []).append(p)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of one process now (0 when it is gone)."""
    try:
        pages = int((PROC / str(pid) / "statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _cmdline(pid: int | str) -> bytes:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def hwm_bytes(pid: int) -> int | None:
    """The peak resident memory of a living process (``VmHWM``), or None."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class ProcessTreeMonitor:
    """Peak memory of a process tree and the load average while it runs (see the module doc)."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.pid: int | None = None
        self.peak_tree = 0
        self.root_hwm: int | None = None
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._own = _cmdline("self")

    def start(self, pid: int) -> ProcessTreeMonitor:
        self.pid = pid
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"monitor-{pid}")
        self._thread.start()
        return self

    def sample(self) -> None:
        if self.pid is None or not PROC.exists():
            return
        if _cmdline(self.pid) == self._own:  # forked, not yet exec'd: its memory is ours
            return
        tree = descendants(self.pid)
        self.peak_tree = max(self.peak_tree, sum(rss_bytes(p) for p in tree))
        hwm = hwm_bytes(self.pid)
        if hwm is not None:
            self.root_hwm = max(self.root_hwm or 0, hwm)
        try:
            self.loads.append(os.getloadavg()[0])
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> dict:
        """A last sample (call it while the process still lives), then the figures:
        ``peak_rss_bytes`` (the larger of the root's high-water mark and the tree's sampled
        peak), ``root_hwm_bytes``, ``tree_peak_bytes``, ``load_mean``, ``load_avg``."""
        if self._thread is not None and not self._stop.is_set():
            self.sample()
            self._stop.set()
            self._thread.join()
        peak = max(self.peak_tree, self.root_hwm or 0)
        return {
            "peak_rss_bytes": peak or None,
            "root_hwm_bytes": self.root_hwm,
            "tree_peak_bytes": self.peak_tree or None,
            "load_mean": round(sum(self.loads) / len(self.loads), 2) if self.loads else None,
            "load_avg": load_average(),
        }


def cost_row(stage: str, status: str, seconds: float, usage: dict, disk_bytes: int, **kw) -> dict:
    """One CSV row from a wall time, a monitor's figures and the disk growth; ``kw`` adds
    ``unit``, ``units`` (``units_per_s`` follows) and ``note``."""
    units = kw.get("units")
    rate = units / seconds if units is not None and seconds > 0 else None
    hwm, peak = usage.get("root_hwm_bytes"), usage.get("peak_rss_bytes")
    return {
        "stage": stage,
        "status": status,
        "wall_s": round(seconds, 1),
        "peak_rss_gb": round(peak / GB, 2) if peak else None,
        "kernel_hwm_gb": round(hwm / GB, 2) if hwm else None,
        "disk_written_mb": round(disk_bytes / MB, 1),
        "unit": kw.get("unit", ""),
        "units": units,
        "units_per_s": None if rate is None else float(f"{rate:.4g}"),
        "load_avg": usage.get("load_avg") or load_average(),
        "load_mean": usage.get("load_mean"),
        "note": kw.get("note", ""),
    }


def read_rows(path: Path | str) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def upsert_rows(path: Path | str, rows: list[dict]) -> list[dict]:
    """Write ``rows`` into the CSV at ``path``, replacing rows of the same ``stage`` in place and
    appending new ones (atomically: a temporary file renamed over it). Returns every row."""
    path = Path(path)
    old = read_rows(path)
    new = {r["stage"]: r for r in rows}
    out = [new.pop(r["stage"], r) for r in old] + list(new.values())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)
    return out


def _num(v) -> float | None:
    try:
        return None if v in (None, "") else float(v)
    except (TypeError, ValueError):
        return None


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of cost rows with a total line (wall and disk summed, memory max)."""
    head = ["stage", "wall s", "peak GB", "disk MB", "units", "unit", "per s", "load 1/5/15"]
    body = []
    for r in rows:
        units, rate = _num(r.get("units")), _num(r.get("units_per_s"))
        body.append(
            [
                str(r["stage"]),
                f"{_num(r['wall_s']) or 0:.1f}",
                "" if _num(r.get("peak_rss_gb")) is None else f"{_num(r['peak_rss_gb']):.2f}",
                f"{_num(r.get('disk_written_mb')) or 0:.1f}",
                "" if units is None else f"{units:g}",
                str(r.get("unit") or ""),
                "" if rate is None else f"{rate:.3g}",
                str(r.get("load_avg") or ""),
            ]
        )
    walls = [_num(r["wall_s"]) or 0 for r in rows]
    peaks = [p for r in rows if (p := _num(r.get("peak_rss_gb"))) is not None]
    disk = sum(_num(r.get("disk_written_mb")) or 0 for r in rows)
    body.append(
        [
            "total",
            f"{sum(walls):.1f}",
            f"{max(peaks):.2f}" if peaks else "",
            f"{disk:.1f}",
            "",
            "",
            "",
            load_average(),
        ]
    )
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i in (0, 5, 7) else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([fmt(head), *(fmt(b) for b in body)])


def measure(cmd: list[str], stage: str, csv_path: Path | str, watch: Path | str, **kw) -> int:
    """Run ``cmd`` (its output passes through), measure it like a notebook, and write its row:
    wall time, peak memory of its process tree, growth of the folder ``watch``. Returns its exit
    code."""
    before = dir_bytes(watch)
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    monitor = ProcessTreeMonitor().start(proc.pid)
    while True:  # reaped here, so that wait4 gives the child's own peak (ru_maxrss, KiB)
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.2)
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    usage = monitor.stop()
    # Linux carries the high-water mark of the memory a child was forked from (ours) into the
    # child's ru_maxrss at exec, so it is the child's own peak only when above our own peak;
    # else the monitor's samples of the child's VmHWM stand alone
    child, ours = rusage.ru_maxrss * 1024, hwm_bytes(os.getpid()) or 0
    hwm = max(usage["root_hwm_bytes"] or 0, child if child > ours else 0)
    usage.update(root_hwm_bytes=hwm, peak_rss_bytes=max(usage["peak_rss_bytes"] or 0, hwm))
    row = cost_row(
        stage,
        "done" if code == 0 else "failed",
        time.time() - t0,
        usage,
        dir_bytes(watch) - before,
        **kw,
    )
    upsert_rows(csv_path, [row])
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lib.pipeline.process_costs", description=__doc__.split("\n\n")[0]
    )
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("measure", help="run a command and write its cost row")
    m.add_argument("--csv", required=True, help="the costs CSV (rows replaced by stage)")
    m.add_argument("--stage", required=True, help="the row's name")
    m.add_argument("--dir", default=".", help="folder whose growth is the disk written")
    m.add_argument("--note", default="", help="free text for the row")
    m.add_argument("cmd", nargs=argparse.REMAINDER, help="-- command and arguments")
    t = sub.add_parser("table", help="print a costs CSV as a table")
    t.add_argument("csv")
    args = ap.parse_args(argv)
    if args.what == "table":
        print(format_table(read_rows(args.csv)))
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("measure: give the command after --")
    return measure(cmd, args.stage, args.csv, args.dir, note=args.note)


if __name__ == "__main__":
    sys.exit(main())
