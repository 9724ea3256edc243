"""A stand-in book for grid tests: seven tiny notebooks, their declared outputs, and a runner.

Each fake notebook opens the run for writing the way the real ones do (``open_run``: the run's
lock, or the grid's lease of it), may fail or sleep on request (``GRID_TEST_FAIL``,
``GRID_TEST_SLEEP``), appends one row to ``results/log.jsonl`` (so two writers would show as
doubled rows) and writes ``results/<cell>.json``. :func:`fake_stages` declares that file as the
notebook's output, the way :data:`lib.pipeline.stages.STAGES` declares the real ones. :data:`RUNNER` runs
``python -m lib.pipeline.grid`` with that table, for tests that need the grid in a process of its own.
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

from lib.pipeline.stages import OK, Stage, invalid

STEMS = [
    "01_sampling",
    "02_classification",
    "03_activation_capture",
    "04_sae_training",
    "05_layer_profile_probing",
    "06_ste_comparison",
    "07_summary",
]

BODY = """
import json, os, time
from lib.core.fileio import append_jsonl
from lib.core.rundir import open_run
cfg, run = open_run(config, run_name, overrides)
extra = {k: v for k, v in globals().items() if k in ("layer", "arch", "condition")}
if os.environ.get("GRID_TEST_FAIL") and extra.get("condition") == os.environ["GRID_TEST_FAIL"]:
    raise RuntimeError("planted failure")
time.sleep(float(os.environ.get("GRID_TEST_SLEEP", "0")))
name = "{stem}" + "".join(f"_{v}" for v in extra.values())
append_jsonl(run.results / "log.jsonl", [{"cell": name}])
(run.results / f"{name}.json").write_text(json.dumps(extra, sort_keys=True))
print(f"cell {name} ran")
"""


def make_fake_notebooks(root: Path) -> Path:
    nbdir = root / "notebooks"
    nbdir.mkdir()
    for stem in STEMS:
        nb = nbf.v4.new_notebook()
        params = 'config = "organism"\nrun_name = None\noverrides = {}'
        if stem == "04_sae_training":
            params += '\nlayer = 0\narch = "topk"\ncondition = "mixed"'
        nb.cells = [
            nbf.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
            nbf.v4.new_code_cell(BODY.replace("{stem}", stem)),
        ]
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbf.write(nb, nbdir / f"{stem}.ipynb")
    return nbdir


def output_name(stem: str, params: dict) -> str:
    return stem + "".join(f"_{params[k]}" for k in ("layer", "arch", "condition") if k in params)


def fake_stages() -> dict[str, Stage]:
    """Each fake notebook promises ``results/<cell>.json``."""

    def path(ins, params, stem):
        return ins.run.results / f"{output_name(stem, params)}.json"

    def stage(stem: str) -> Stage:
        def check(ins, params):
            p = path(ins, params, stem)
            return OK if p.exists() else invalid(f"results/{p.name} is missing")

        return Stage("results/<cell>.json", check, lambda ins, params: [path(ins, params, stem)])

    return {stem: stage(stem) for stem in STEMS}


RUNNER = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import lib.pipeline.stages
from fake_book import fake_stages
lib.pipeline.stages.STAGES.clear()
lib.pipeline.stages.STAGES.update(fake_stages())
from lib.pipeline.grid import main
sys.exit(main(sys.argv[1:]))
"""
