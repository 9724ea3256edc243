"""One writer per run directory: an OS lock that dies with the process holding it.

A process that writes into a run directory holds ``fcntl.flock(LOCK_EX)`` on ``<run>/.writer.lock``.
The kernel releases a flock when the holder exits for any reason (kill -9 included), so a lock is
never stale, and a second writer fails at once with :class:`RunLockedError`, whose one-line
message names the holder (pid, command, start time) and what to do.

The grid holds the lock of its run for the whole grid and lends it to the notebooks it starts:
it puts the lock's random token in the environment variable :data:`LEASE_ENV` of each kernel.
A process whose :data:`LEASE_ENV` lists the token recorded in the lock file, while that lock is
still held, writes as the holder's delegate (several kernels of one grid write different files of
one run in parallel). Every holder also adds its token to its own environment, so the processes
it starts (a notebook's worker processes) are its delegates too. A lease whose holder has died
is void: the process stops with an error instead of writing beside a new holder.

Readers take no lock. Locks are per process: a process asking twice for the same run gets the
lock it already holds. The lock file stays in the run directory (deleting it would let a new
writer lock a new file while an old writer still holds the old one).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = ".writer.lock"  # distinctive: pytest, among others, keeps ".lock" files in folders
LEASE_ENV = "DECEPTION_SAES_RUN_LEASE"


class RunLockedError(RuntimeError):
    """Another process writes into this run directory (the message says which and what to do)."""


@dataclass(frozen=True)
class RunLock:
    """The right of this process to write into ``root``: held, or lent by the holder."""

    root: Path
    token: str
    fd: int | None  # the flocked descriptor; None for a lease lent by another process
    holder_pid: int

    @property
    def lent(self) -> bool:
        return self.fd is None

    def lease_env(self) -> dict[str, str]:
        """The environment a child process needs to write into the run as this holder's delegate."""
        return {LEASE_ENV: _with_token(os.environ.get(LEASE_ENV, ""), self.token)}


_held: dict[str, RunLock] = {}
_guard = threading.Lock()


def _key(root: Path | str) -> str:
    return os.path.realpath(root)


def lock_path(root: Path | str) -> Path:
    return Path(root) / LOCK_NAME


def _command_line() -> str:
    try:
        raw = Path(f"/proc/{os.getpid()}/cmdline").read_bytes()
        cmd = " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)
    except OSError:
        cmd = " ".join([sys.executable, *sys.argv])
    return " ".join(cmd.split())[:200]  # one line, even for ``python -c "<script>"``


def holder_info(root: Path | str) -> dict:
    """What the lock file says about its current or last holder (``{}`` when unreadable)."""
    try:
        info = json.loads(lock_path(root).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(root: Path) -> str:
    info = holder_info(root)
    who = (
        f"pid {info.get('pid', '?')} on {info.get('host', '?')} ({info.get('command', '?')}), "
        f"since {info.get('started', '?')}"
        if info
        else "another process"
    )
    return (
        f"run directory {root} is being written by {who}; wait for it to finish or stop it "
        f"(kill {info.get('pid', 'PID')}): the lock is released when that process exits. "
        "To only read the run, use open_run(..., write=False)."
    )


def _is_held_elsewhere(path: Path) -> bool:
    """True when some process holds the flock on ``path`` (tested with a probe descriptor)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)  # closing the probe releases a probe lock; it never touches another fd's
    return False


def busy(root: Path | str) -> dict | None:
    """What the lock file says about its holder when some process holds it now; else None."""
    if not _is_held_elsewhere(lock_path(root)):
        return None
    return holder_info(root) or {"pid": "?", "command": "?", "started": "?"}


def _with_token(tokens: str, token: str) -> str:
    return ",".join(dict.fromkeys([*filter(None, tokens.split(",")), token]))


def _lease(root: Path) -> RunLock | None:
    """The lease lent through :data:`LEASE_ENV`, when it is this run's live lock; else None."""
    tokens = set(filter(None, os.environ.get(LEASE_ENV, "").split(",")))
    if not tokens:
        return None
    info = holder_info(root)
    token = info.get("token")
    if token not in tokens or info.get("root") != str(root.resolve()):
        return None  # a lease of another run, or a lock file copied with a run: take our own
    if not _is_held_elsewhere(lock_path(root)):
        raise RunLockedError(
            f"run directory {root}: the process that started this one (pid {info.get('pid')}, "
            f"{info.get('command', '?')}) has exited, so its lease is void; rerun it"
        )
    return RunLock(root, token, None, int(info.get("pid", 0)))


def acquire(root: Path | str) -> RunLock:
    """The write lock of run directory ``root`` (created if missing), or :class:`RunLockedError`.

    Never waits: a run another process writes fails at once. Re-entrant within a process.
    """
    root = Path(root)
    key = _key(root)
    with _guard:
        if key in _held:
            return _held[key]
        root.mkdir(parents=True, exist_ok=True)
        lent = _lease(root)
        if lent is not None:
            _held[key] = lent
            return lent
        fd = os.open(lock_path(root), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(_describe(root)) from None
            raise
        token = secrets.token_hex(16)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": _command_line(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": token,
            "root": str(root.resolve()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        lock = RunLock(root, token, fd, os.getpid())
        _held[key] = lock
        os.environ[LEASE_ENV] = _with_token(os.environ.get(LEASE_ENV, ""), token)
        return lock


def release(root: Path | str) -> None:
    """Give up this process's lock (or lease) of ``root``; nothing happens when it holds none."""
    with _guard:
        lock = _held.pop(_key(root), None)
    if lock is not None and lock.fd is not None:
        os.close(lock.fd)  # closing the only descriptor releases the flock
        left = [t for t in os.environ.get(LEASE_ENV, "").split(",") if t and t != lock.token]
        if left:
            os.environ[LEASE_ENV] = ",".join(left)
        else:
            os.environ.pop(LEASE_ENV, None)


def held(root: Path | str) -> RunLock | None:
    """This process's lock or lease of ``root``, if it has one."""
    return _held.get(_key(root))


def find_run_root(path: Path | str, max_up: int = 2) -> Path | None:
    """The nearest directory at or above ``path`` (at most ``max_up`` levels up: a run's files lie
    at most that deep, e.g. ``cache/judge/``) holding a run's lock file."""
    p = Path(path)
    for cand in [p, *list(p.parents)[:max_up]]:
        if (cand / LOCK_NAME).exists():
            return cand
    return None


def require_writer(path: Path | str) -> None:
    """Fail unless this process may write ``path``: inside a locked run, it must hold the lock.

    A file outside any run directory with a lock file passes. Inside one, the lock is taken now
    (or its lease honoured) when this process does not hold it yet: the second writer fails.
    """
    root = find_run_root(Path(path).parent)
    if root is not None and held(root) is None:
        acquire(root)


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.core.runlock RUN_DIR -- COMMAND ...``: run a command as the writer of a run.

    Takes the run's lock (failing at once, like any writer, when another process holds it), lends
    it to the command and everything the command starts, and returns the command's exit status.
    ``make check-book`` runs nbval this way, so that two notebooks re-executed side by side write
    their (unchanged) outputs as one writer's delegates.
    """
    import argparse
    import subprocess

    parser = argparse.ArgumentParser(prog="python -m lib.core.runlock", description=main.__doc__)
    parser.add_argument("run_dir", help="the run directory (created when missing)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: python -m lib.core.runlock RUN_DIR -- COMMAND ...")
    try:
        acquire(args.run_dir)
    except RunLockedError as e:
        print(f"lib.core.runlock: {e}", file=sys.stderr)
        return 1
    try:
        return subprocess.call(command)  # inherits LEASE_ENV, set by acquire
    finally:
        release(args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
