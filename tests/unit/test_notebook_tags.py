"""nbval's markers are cell tags, not comments in the code a reader sees: nbval reads both
(``nbval.plugin.find_metadata_tags`` / ``find_comment_markers``), so moving them keeps what
``make check-book`` compares, cell for cell."""

from __future__ import annotations

import nbformat
from nbval.plugin import find_comment_markers, find_metadata_tags, metadata_tags

from lib.core.config import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: cells whose output nbval compares under --nbval-lax (make check-book), per notebook
CHECKED = {"01": 1, "02": 1, "03": 1, "04": 1, "05": 2, "06": 1, "07": 1, "08": 1, "09": 1,
           "10": 2, "11": 0}  # fmt: skip


def code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_no_nbval_comment_in_any_code_cell():
    assert len(NOTEBOOKS) == len(CHECKED)
    for nb in NOTEBOOKS:
        for i, cell in enumerate(code_cells(nb)):
            assert not dict(find_comment_markers(cell.source)), f"{nb.name} cell {i}"
            assert "NBVAL" not in cell.source, f"{nb.name} cell {i}"


def test_every_tag_is_one_nbval_or_papermill_knows():
    known = set(metadata_tags) | {"parameters"}
    for nb in NOTEBOOKS:
        for cell in code_cells(nb):
            assert set(cell.metadata.get("tags", [])) <= known, (nb.name, cell.metadata["tags"])


def test_nbval_checks_the_same_cells_through_tags():
    """Every notebook's first code cell is papermill's parameters cell; the checked cells are the
    ones counted in CHECKED, and every other cell with an output worth ignoring says so."""
    for nb in NOTEBOOKS:
        cells = code_cells(nb)
        assert cells[0].metadata["tags"] == ["parameters"], nb.name
        options = [dict(find_metadata_tags(c.metadata)) for c in cells]
        assert sum(o.get("check") is True for o in options) == CHECKED[nb.name[:2]], nb.name
        assert all("skip" not in o and "check_exception" not in o for o in options), nb.name
