"""A notebook executed with papermill by hand (no grid, no ``DECEPTION_SAES_BATCH``) stores plain
log lines, not widget bars frozen at their first frame ("Loading weights: 0%| 0/75"): the kernel
sees that papermill's client cannot answer ``input()`` (``allow_stdin: false``), which no frontend
a person watches sends (:func:`lib.core.runtime.batch_mode`)."""

from __future__ import annotations

import nbformat
import papermill as pm

from lib.core.config import REPO_ROOT

WIDGET = "application/vnd.jupyter.widget-view+json"


def test_a_notebook_run_by_hand_with_papermill_stores_no_widget(
    tmp_path, organism_path, monkeypatch
):
    monkeypatch.delenv("DECEPTION_SAES_BATCH", raising=False)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from lib.core.runtime import batch_mode, progress\n"
            "from lib.models.loading import load_model_path\n"
            "print('batch:', batch_mode())\n"
            "for _ in progress(range(8), desc='sampling'):\n"
            "    pass"
        ),
        nbformat.v4.new_code_cell(f"model, tok = load_model_path({str(organism_path)!r})"),
        # the control: tqdm.auto itself draws a widget in this very kernel
        nbformat.v4.new_code_cell("from tqdm.auto import tqdm\nfor _ in tqdm(range(3)):\n    pass"),
    ]
    src, out = tmp_path / "by_hand.ipynb", tmp_path / "by_hand.out.ipynb"
    nbformat.write(nb, src)
    pm.execute_notebook(
        str(src), str(out), kernel_name="python3", cwd=str(REPO_ROOT), progress_bar=False
    )  # the kernel inherits this environment: no grid's, no DECEPTION_SAES_BATCH
    executed = nbformat.read(out, as_version=4).cells
    ours = [o for c in executed[:2] for o in c.outputs]
    control = executed[2].outputs
    assert [o for o in ours if WIDGET in o.get("data", {})] == []
    text = "".join(o.get("text", "") for o in ours if o["output_type"] == "stream")
    assert "batch: True" in text
    assert "sampling: 8/8 done" in text
    assert "Loading weights" not in text and "\r" not in text
    assert [o for o in control if WIDGET in o.get("data", {})], control  # a widget is seen
