"""Where a live bar is drawn (:func:`lib.core.runtime.batch_mode`): a frontend a person watches
(its execute requests allow ``input()``) or a terminal; never papermill / nbval or a log file."""

from __future__ import annotations

import io
import sys
import types

import pytest

from lib.core import runtime
from lib.core.runtime import LogProgress, batch_mode, progress


def fake_kernel(monkeypatch, allow_stdin):
    kernel = types.SimpleNamespace(
        get_parent=lambda channel: {"content": {"allow_stdin": allow_stdin}}
    )
    shell = types.SimpleNamespace(kernel=kernel)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))


@pytest.mark.parametrize("allow_stdin, batch", [(True, False), (False, True)])
def test_a_kernel_draws_live_bars_only_for_a_frontend_that_answers_input(
    monkeypatch, allow_stdin, batch
):
    monkeypatch.delenv(runtime.BATCH_ENV, raising=False)
    fake_kernel(monkeypatch, allow_stdin)  # JupyterLab sends True; papermill, nbval False
    assert runtime.kernel_frontend_answers_input() is allow_stdin
    assert batch_mode() is batch
    assert isinstance(progress(range(3), desc="x"), LogProgress) is batch


def test_outside_a_kernel_a_terminal_decides(monkeypatch):
    monkeypatch.delenv(runtime.BATCH_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "IPython", None)
    assert runtime.kernel_frontend_answers_input() is None
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no \r frames
    assert batch_mode() is True
    tty = io.StringIO()
    tty.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", tty)
    assert batch_mode() is False
    monkeypatch.setenv(runtime.BATCH_ENV, "1")  # the make targets force log lines
    assert batch_mode() is True
