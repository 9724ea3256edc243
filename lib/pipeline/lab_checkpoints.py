"""JupyterLab's checkpoints (``make lab``) in one git-ignored folder, not beside every notebook.

By default the server saves a notebook's checkpoint into ``.ipynb_checkpoints/`` beside it: opening
the executed notebooks of a run writes into the run's folder, and into ``notebooks/``.
``FileCheckpoints.checkpoint_dir`` given as an absolute path moves them into one folder, but flat
(jupyter_server joins it to the notebook's folder, and ``os.path.join`` keeps the absolute
path alone): ``notebooks/07_summary.ipynb`` and ``data/runs/default/notebooks/07_summary.ipynb``
would share one checkpoint, and "Revert to checkpoint" would restore the other file.
:class:`MirroredCheckpoints` keeps each checkpoint under ``checkpoint_dir`` at the notebook's own
path below the server's root. ``make lab`` passes::

    --ContentsManager.checkpoints_class=lib.pipeline.lab_checkpoints.MirroredCheckpoints
    --MirroredCheckpoints.checkpoint_dir=<repository>/.cache/lab-checkpoints
"""

from __future__ import annotations

import os

from jupyter_core.utils import ensure_dir_exists
from jupyter_server.services.contents.filecheckpoints import AsyncFileCheckpoints


class MirroredCheckpoints(AsyncFileCheckpoints):
    """File checkpoints under one absolute ``checkpoint_dir``, at each file's path below the
    server's root (``a/b/nb.ipynb`` -> ``<checkpoint_dir>/a/b/nb-checkpoint.ipynb``)."""

    def checkpoint_path(self, checkpoint_id: str, path: str) -> str:
        if not os.path.isabs(self.checkpoint_dir):  # a relative name: the server's own way
            return super().checkpoint_path(checkpoint_id, path)
        parent, name = ("/" + path.strip("/")).rsplit("/", 1)
        basename, ext = os.path.splitext(name)
        cp_dir = os.path.join(self.checkpoint_dir, *[p for p in parent.split("/") if p])
        with self.perm_to_403():
            ensure_dir_exists(cp_dir)
        return os.path.join(cp_dir, f"{basename}-{checkpoint_id}{ext}")
