"""Two books of the organism, built under two thread layouts (``make perturbation``), must say the
same thing wherever nbval checks them: every ``nbval-check-output``-tagged cell of every executed
notebook prints the same text in both runs (after the same sanitising as nbval's).

``FIRST_RUN_DIR`` and ``SECOND_RUN_DIR`` name the two run directories.
"""

from __future__ import annotations

import configparser
import json
import os
import re
from pathlib import Path

import pytest

CHECK_TAG = "nbval-check-output"
SANITIZE = Path(__file__).resolve().parent.parent / "nbval_sanitize.cfg"


def sanitizers() -> list[tuple[re.Pattern, str]]:
    cp = configparser.ConfigParser()
    cp.read(SANITIZE)
    return [(re.compile(cp[s]["regex"]), cp[s]["replace"]) for s in cp.sections()]


def checked_outputs(notebook: Path) -> list[str]:
    """Text of every output of every cell tagged ``nbval-check-output`` (nbval's cell tag for
    what it compares under ``--nbval-lax``), sanitised, in cell order."""
    nb = json.loads(notebook.read_text())
    out = []
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell["cell_type"] != "code" or CHECK_TAG not in tags:
            continue
        text = ""
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream":
                text += "".join(o["text"])
            elif "data" in o:
                text += "".join(o["data"].get("text/plain", ""))
        for pattern, repl in sanitizers():
            text = pattern.sub(repl, text)
        out.append(text)
    return out


def run_dirs() -> tuple[Path, Path]:
    first, second = os.environ.get("FIRST_RUN_DIR"), os.environ.get("SECOND_RUN_DIR")
    if not (first and second):
        pytest.fail("set FIRST_RUN_DIR and SECOND_RUN_DIR (make perturbation does)")
    return Path(first), Path(second)


def test_every_checked_output_is_the_same_under_both_thread_layouts():
    first, second = run_dirs()
    books = sorted((first / "notebooks").glob("*.ipynb"))
    assert len(books) >= 7, f"no executed notebooks in {first / 'notebooks'}"
    compared = 0
    for nb in books:
        other = second / "notebooks" / nb.name
        assert other.exists(), f"{other} was not executed"
        a, b = checked_outputs(nb), checked_outputs(other)
        assert a == b, f"{nb.name}: checked outputs differ between the two thread layouts"
        compared += len(a)
    assert compared >= 10  # the comparison covered the checked cells of the book


def test_a_different_output_is_caught(tmp_path):
    """The comparison can fail: a checked cell with other text is seen."""
    cell = {
        "cell_type": "code",
        "source": "print(1)",
        "metadata": {"tags": [CHECK_TAG]},
        "outputs": [{"output_type": "stream", "name": "stdout", "text": "peak layer 6\n"}],
    }
    nb = tmp_path / "a.ipynb"
    nb.write_text(json.dumps({"cells": [cell]}))
    cell["outputs"][0]["text"] = "peak layer 4\n"
    other = tmp_path / "b.ipynb"
    other.write_text(json.dumps({"cells": [cell]}))
    assert checked_outputs(nb) != checked_outputs(other)
