"""Sphinx configuration of the rendered book: `make docs` -> docs/_build/html/index.html.

The pages are README.md (the landing page, included by index.md), docs/*.md, the executed
notebooks of notebooks/ (their stored outputs, from the organism run: nothing is executed) and a
page of figures for every published run of figures/<run>/. Everything the HTML needs is copied
into the build: no page loads a font, a script or a style sheet from another host, and the build
fetches nothing.

notebooks/ and figures/ lie beside docs/, outside Sphinx's source directory; they are linked into
it here (docs/notebooks, docs/figures: symlinks, ignored by git), so that the notebooks are pages of
the book and the image paths of the Markdown resolve. The figures pages (docs/gallery/<run>.md,
ignored by git) are written here from what figures/<run>/ holds.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

project = "deception-saes"
author = "deception-saes"
copyright = "deception-saes"

extensions = ["myst_nb"]  # myst_nb brings myst_parser (Markdown) and reads the .ipynb files

# --- sources -------------------------------------------------------------------------------------

# Markdown through myst_parser, notebooks through myst_nb (registered by the extension itself)
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "figures/screenshots"]


def _link(name: str) -> None:
    """docs/<name> -> ../<name> (a symlink; a copy where symlinks cannot be made)."""
    target, link = ROOT / name, DOCS / name
    if link.is_symlink() or link.exists():
        return
    try:
        link.symlink_to(Path("..") / name, target_is_directory=True)
    except OSError:
        shutil.copytree(target, link)


for _name in ("notebooks", "figures"):
    _link(_name)

# --- the figures pages: one for each published run of figures/<run>/ -----------------------------

# where the text that discusses a run's figures is, and the figures in the order the text shows them
RUN_TEXT = {
    "smollm2-135m-instruct": "the README's [What the book finds on real models](../index.md#what-the-book-finds-on-real-models)",
    "gemma-3-270m": "the README's [What the book finds on real models](../index.md#what-the-book-finds-on-real-models)",
    "organism": "[The model organism](../organism.md); its notebooks are the [executed notebooks](../index.md#notebooks) of this book",
}
FIGURE_ORDER = ["layer_profile", "sae_vs_raw_heatmap", "ste_vs_topk", "sae_leakage", "l0_vs_fvu", "probe_controls",
                "label_counts", "label_geometry"]  # then the rest, by name


def _model_label(run: str) -> str | None:
    try:
        label = json.loads((ROOT / "figures" / run / "facts.json").read_text()).get("model_label")
    except (OSError, ValueError, AttributeError):
        return None
    return label if isinstance(label, str) and label else None


def _gallery_page(run: str) -> str:
    folder = ROOT / "figures" / run
    rel = f"../figures/{run}"
    label = _model_label(run)
    pngs = sorted(folder.glob("*.png"), key=lambda p: (FIGURE_ORDER.index(p.stem) if p.stem in FIGURE_ORDER
                                                       else len(FIGURE_ORDER), p.stem))
    lines = [f"# Figures: {run}", ""]
    if label:
        lines += [f"**{label}.**", ""]
    lines += [
        f"The figures `make publish` copied into `figures/{run}/` (each PNG, with its PDF beside it);"
        f" the text that discusses them: {RUN_TEXT.get(run, 'the README')}."
        " Click a figure for the full-size image.",
        "",
        " · ".join(f"[{p.stem}](#{p.stem.lower()})" for p in pngs),
        "",
    ]
    for png in pngs:
        stem = png.stem
        lines += [f"## {stem}", "", f"![{stem}]({rel}/{png.name})", ""]
        links = [f"{{download}}`PNG <{rel}/{png.name}>`"]
        if png.with_suffix(".pdf").is_file():
            links.append(f"{{download}}`PDF <{rel}/{stem}.pdf>`")
        lines += [" · ".join(links), ""]
    summary = folder / "summary.csv"
    if summary.is_file():
        downloads = f"{{download}}`summary.csv <{rel}/summary.csv>`"
        if (folder / "facts.json").is_file():
            downloads += f" · {{download}}`facts.json <{rel}/facts.json>`"
        lines += [
            "## summary",
            "",
            f"The run's `results/summary.csv`, as published: {downloads}",
            "",
            "```{csv-table}",
            f":file: {rel}/summary.csv",
            ":header-rows: 1",
            "```",
            "",
        ]
    return "\n".join(lines)


def _write_galleries() -> list[str]:
    out = DOCS / "gallery"
    out.mkdir(exist_ok=True)
    runs = [p.name for p in (ROOT / "figures").iterdir() if p.is_dir() and any(p.glob("*.png")) and (p / "summary.csv").is_file()]
    runs.sort(key=lambda r: (r == "organism", r))  # the real models first, the organism (a fixture) last
    for stale in out.glob("*.md"):
        if stale.stem not in runs:
            stale.unlink()
    for run in runs:
        page, text = out / f"{run}.md", _gallery_page(run)
        if not page.is_file() or page.read_text() != text:  # an unchanged page is not rebuilt
            page.write_text(text)
    return runs


GALLERY_RUNS = _write_galleries()

# --- notebooks: their stored outputs, never executed ---------------------------------------------

nb_execution_mode = "off"
# the notebooks' widget state would otherwise make myst-nb load require.js and the widget manager
# from a CDN on their pages
nb_ipywidgets_js = {}
myst_enable_extensions = ["colon_fence"]  # no dollarmath: the Markdown has no math
myst_heading_anchors = 3  # GitHub-style #section links

# --- HTML: furo, whose fonts, styles and scripts ship in its package -----------------------------

html_theme = "furo"
html_title = "deception-saes"
html_static_path = ["_static"]
html_js_files = ["image-links.js"]  # every figure links to its full-size image
html_css_files = ["book.css"]
html_show_sourcelink = False
html_copy_source = False
# Math: no page has any (no dollarmath; no notebook output is LaTeX), so Sphinx adds no MathJax
# script; should one ever appear, the check below fails the build rather than let the page load
# MathJax from its CDN.

# --- the check: no page or style sheet of the build loads anything from another host --------------

_EXTERNAL = re.compile(
    r"""<(?:script|link|img|iframe|source)\b[^>]*?\b(?:src|href)\s*=\s*["']?(?:https?:)?//"""
    r"""|@import\s+(?:url\()?["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//""",
    re.IGNORECASE,
)


def _check_no_external_assets(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    from sphinx.util import logging

    logger = logging.getLogger("deception-saes")
    out = Path(app.outdir)
    for path in sorted([*out.rglob("*.html"), *out.rglob("*.css")]):
        text = path.read_text(errors="replace")
        for match in _EXTERNAL.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            logger.warning("external asset in %s:%d: %s", path.relative_to(out), line, text[match.start(): match.start() + 120])


def setup(app):
    app.connect("build-finished", _check_no_external_assets)
