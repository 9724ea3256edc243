"""The feature dashboard of one SAE: ``features/<sae_id>/index.html`` and its pages (notebook 08).

Self-contained HTML, no server, nothing loaded from outside: styles are inline, figures are inline
SVG, there is no script. It opens from the file system in a browser and in JupyterLab. Like
sae-dashboard's and Neuronpedia's pages it shows, per latent, what the latent writes (its logit
effects: the tokens ``W_dec[i] @ W_U`` promotes and suppresses), how often it fires (its
activation density over all response tokens of the run), its activation histogram and examples
with every token shaded by the activation (exact value in the tooltip); beside them, what the
book asks of a latent: its deception AUROC with CI, q-value and held-out-scenario AUROC, and the
word control of issue 24 (:mod:`lib.latents.word_control`: the "no"-vs-"yes" AUROC regardless of label,
the deception AUROC within each answer word, and a *word latent* named as such).

``index.html``
    the SAE's facts, its log-density histogram, a scatter of deception AUROC against word AUROC
    for every latent that fires, the top-latent table (``<table id="latent-table">``), the
    k-sparse table, the top latents' sections, and the table of **every latent that fires**
    (``<table id="all-latents">``, in rank order of ``|AUROC - 0.5|``), each row linked to its
    section;
``latents/page-NN.html``
    the sections of every latent that fires, :data:`PAGE_SIZE` per page in the same rank order.

Examples are decoded as differences of decoded prefixes (:func:`lib.latents.effects.token_pieces`),
so a character split over byte-level tokens shows whole.

Why the pages are not sae-dashboard's (PyPI ``sae-dashboard`` 0.8, tried offline on the book's
real-model SAEs in a separate virtual environment, 2026-12-06):

* it cannot share the book's environment: installing it would replace transformers 5.23 by
  4.56.2, safetensors 0.8 by 0.4.5, numpy 2 by 1.26 and torch (``pip install --dry-run``);
* it recomputes activations through a TransformerLens ``HookedSAETransformer``, which loads
  only models TransformerLens lists by name. SmolLM2-135M-Instruct is not listed:
  ``ValueError: HuggingFaceTB/SmolLM2-135M-Instruct not found. Valid official model names
  (excl aliases): ['gpt2', ...]`` (and transformers 4.56 cannot read the converted model's
  tokenizer: ``ValueError: Tokenizer class TokenizersBackend does not exist or is not
  currently imported.``);
* on Gemma-3-270M (listed) it ran from the local de-quantised weights and wrote its page
  (SAE hook renamed to ``blocks.7.hook_resid_post``; 256 prompts of 64 tokens), but the page
  loads d3 and plotly from ``https://d3js.org`` and ``https://cdn.plot.ly``: opened offline it
  is blank;
* it reads none of the run directory (the judge's labels, the pooled statistics, the word
  control, the completion ids the examples link to), which is what this page is for.

The page is written with Jinja2 (installed with nbconvert).
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import jinja2

from lib.core.fileio import atomic_write_text
from lib.figures.style import LABEL_COLOURS
from lib.latents.word_control import MIN_PER_CLASS

#: latent sections per page of ``latents/``
PAGE_SIZE = 100
#: promoted tokens shown in the table of every latent
N_TABLE_TOKENS = 4
VERDICT_TEXT = {
    "word": "word latent",
    "deception": "deception within words",
    "untestable": "word = label (untestable)",
    "": "",
}
VERDICT_COLOURS = {
    "word": "#8e44ad",
    "deception": "#c0392b",
    "untestable": "#7f8c8d",
    "": "#bbbbbb",
}

MACROS = r"""
{% macro ci(v, lo, hi) %}{{ fmt(v) }}{% if fmt(lo) != 'n/a' %} <span class="ci">[{{ fmt(lo) }}, {{ fmt(hi) }}]</span>{% endif %}{% endmacro %}
{% macro verdict(v) %}{% if v %}<span class="verdict v-{{ v }}">{{ verdict_text[v] }}</span>{% endif %}{% endmacro %}
{% macro toks(pairs) %}{% for t, v in pairs %}<code class="lt">{{ t }}</code>{% if not loop.last %} {% endif %}{% endfor %}{% endmacro %}
{% macro section(r, examples, histogram, logits, pooling, page_of) %}
<section class="latent" id="latent-{{ r.latent }}">
<h2>Latent {{ r.latent }} <span class="{{ 'dec' if r.auroc >= 0.5 else 'hon' }}">({{ 'deceptive' if r.auroc >= 0.5 else 'honest' }}-high)</span>{% if r.label %}: {{ r.label }}{% endif %} {{ verdict(r.word_verdict) }}</h2>
<p class="meta">deception AUROC {{ ci(r.auroc, r.auroc_ci_low, r.auroc_ci_high) }}, q = {{ '%.2g' % r.q_value }},
held-out-scenario AUROC {{ fmt(r.loso_auroc) }} &middot; <b>"no" vs "yes" AUROC</b> {{ ci(r.word_auroc, r.word_ci_low, r.word_ci_high) }}
&middot; deception AUROC within a word {{ ci(r.within_word_auroc, r.within_ci_low, r.within_ci_high) }}
("no": {{ fmt(r.within_no_auroc) }}, "yes": {{ fmt(r.within_yes_auroc) }})
&middot; fires on {{ pct(r.density) }} of all response tokens, {{ pct(r.rate_deceptive) }} / {{ pct(r.rate_honest) }} of deceptive / honest completions</p>
<div class="row">
<div>{{ histogram | safe }}
{% if logits %}<table class="logits"><thead><tr><th class="l">promoted</th><th></th><th class="l">suppressed</th><th></th></tr></thead><tbody>
{% for (pt, pv), (nt, nv) in zip(logits.top, logits.bottom) %}<tr><td class="l"><code class="lt">{{ pt }}</code></td><td class="pos">{{ '%+.3f' % pv }}</td><td class="l"><code class="lt">{{ nt }}</code></td><td class="neg">{{ '%+.3f' % nv }}</td></tr>
{% endfor %}</tbody></table><p class="meta">logit effect: W_dec[{{ r.latent }}] &middot; W_U (final norm folded in)</p>{% endif %}
</div>
<div style="flex: 1; min-width: 480px">
{% for ex in examples %}<div class="ex {{ ex.label }}"><div class="meta">{{ ex.kind }} &middot; {{ ex.id }} &middot; {{ ex.label }} &middot; max {{ '%.3g' % ex.max }}, {{ pooling }} {{ '%.3g' % ex.pooled }}</div>
<span class="toks">{% for tok, act, tip in ex.pairs %}<span class="tok{{ ' bad' if tok == '\ufffd' else '' }}" title="{{ tip }}{{ ' (bytes that are not a whole UTF-8 character: the completion ends inside one, or the model sampled a lone byte)' if tok == '\ufffd' else '' }}" style="background: {{ shade(act, ex.scale) }}">{{ tok }}</span>{% endfor %}</span></div>
{% else %}<p class="meta">This latent fires on no labelled completion.</p>{% endfor %}
</div></div></section>
{% endmacro %}
"""

HEAD = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; color: #222; padding: 0 1em; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.12em; margin-top: 1.4em; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 2px 7px; text-align: right; vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; } td.l, th.l { text-align: left; }
td:not(.l) { white-space: nowrap; }
.dec { color: {{ colours.deceptive }}; } .hon { color: {{ colours.honest }}; }
.ci { color: #777; font-size: 0.92em; white-space: nowrap; }
.pos { color: #1f6fb2; } .neg { color: #b03a2e; }
code.lt { background: #eef2f7; border-radius: 3px; padding: 0 3px; white-space: pre; font-size: 0.92em; }
.verdict { font-size: 0.8em; border-radius: 8px; padding: 1px 7px; color: white; white-space: nowrap; font-weight: normal; }
{% for v, c in verdict_colours.items() if v %}.v-{{ v }} { background: {{ c }}; }
{% endfor %}
section.latent { border-top: 2px solid #ccc; margin-top: 1.2em; padding-top: 0.3em; }
.row { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; }
.ex { font-family: ui-monospace, monospace; font-size: 0.85em; margin: 4px 0; padding: 4px 6px;
      background: #fafafa; border-left: 4px solid #ccc; }
.toks { white-space: pre-wrap; }
.ex.deceptive { border-left-color: {{ colours.deceptive }}; }
.ex.honest { border-left-color: {{ colours.honest }}; }
.meta { font-family: system-ui, sans-serif; color: #666; font-size: 0.85em; }
.tok { border-radius: 2px; } .tok.bad { outline: 1px dashed #b03a2e; }
.nav { font-size: 0.9em; } .nav a { margin-right: 0.6em; }
.figs { display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; }
.scroll { max-height: 640px; overflow: auto; border: 1px solid #ddd; }
td.tk { max-width: 230px; white-space: normal; }
</style></head>
<body>
"""

INDEX = (
    MACROS
    + HEAD
    + r"""
<h1>SAE features: {{ sae_id }}</h1>
<p class="sub">{{ model_label }} &middot; layer {{ layer }} &middot; n = {{ meta.n }} completions
({{ meta.n_deceptive }} deceptive, {{ meta.n_honest }} honest; judge {{ meta.judge }}) &middot;
d_sae {{ meta.d_sae }}, {{ n_firing }} fire on a labelled completion &middot; codes of every response token, {{ meta.pooling }}-pooled per completion
&middot; {{ meta.n_significant }} latents with q &lt; 0.05 (Benjamini-Hochberg)</p>
<p class="nav">Every latent that fires: <a href="#all-latents">the table</a> &middot; sections by rank:
{% for p in pages %}<a href="{{ p.href }}">{{ p.first }}-{{ p.last }}</a>{% endfor %}</p>

<h2>Density, and deception against the answer word</h2>
<div class="figs"><div>{{ density_svg | safe }}</div><div>{{ scatter_svg | safe }}</div></div>
<p class="meta"><b>Word control</b> (issue 24): the judges decide on the opening words, and a latent that reads "no"
separates lies from truths wherever lies open with "no". Beside each latent's deception AUROC: its AUROC for answers opening "no" against "yes"
regardless of label ({{ meta.answer_words.no }} / {{ meta.answer_words.yes }} of the labelled completions), and its deception AUROC among completions that open with the same word.
<span class="verdict v-word">word latent</span>: the word AUROC is significant (q &lt; 0.05) and its 95% interval lies further from 0.5 than the within-word deception AUROC's;
<span class="verdict v-deception">deception within words</span>: the within-word AUROC is significant (q &lt; 0.05);
<span class="verdict v-untestable">word = label (untestable)</span>: the word AUROC is significant but lies and truths never open with the same word often enough ({{ min_per_class }} of each) to measure within a word.
Counts: {% for v, c in meta.word_verdicts.items() %}{{ verdict_text[v] }} {{ c }}{% if not loop.last %}, {% endif %}{% endfor %}. q: Benjamini-Hochberg over the SAE's latents; the intervals shown are per latent.</p>

<h2>Top latents</h2>
<table id="latent-table">
<thead><tr><th>latent</th><th class="l">direction</th><th>deception AUROC [95% CI]</th><th>q</th>
<th>held-out-scenario AUROC</th><th>"no" vs "yes" AUROC [95% CI]</th><th>within-word deception AUROC [95% CI]</th><th class="l">word control</th>
<th>density</th><th>fires (dec / hon)</th><th class="l">promotes</th>{% if has_labels %}<th class="l">label</th>{% endif %}</tr></thead>
<tbody>
{% for r in top %}<tr class="latent-row">
<td><a href="#latent-{{ r.latent }}">{{ r.latent }}</a></td>
<td class="l {{ 'dec' if r.direction == 'deceptive' else 'hon' }}">{{ r.direction }}-high</td>
<td>{{ ci(r.auroc, r.auroc_ci_low, r.auroc_ci_high) }}</td>
<td>{{ '%.2g' % r.q_value }}</td><td>{{ fmt(r.loso_auroc) }}</td>
<td>{{ ci(r.word_auroc, r.word_ci_low, r.word_ci_high) }}</td>
<td>{{ ci(r.within_word_auroc, r.within_ci_low, r.within_ci_high) }}</td>
<td class="l">{{ verdict(r.word_verdict) }}</td>
<td>{{ pct(r.density) }}</td>
<td>{{ pct(r.rate_deceptive) }} / {{ pct(r.rate_honest) }}</td>
<td class="l tk">{{ toks((logits.get(r.latent) or {}).get('top', [])[:n_table_tokens]) }}</td>
{% if has_labels %}<td class="l">{{ r.label }}</td>{% endif %}</tr>
{% endfor %}</tbody></table>

<h2>How few latents carry the signal (k-sparse probes)</h2>
<table id="k-sparse-table">
<thead><tr><th class="l">probe</th><th>k</th>{% for cv in cvs %}<th>{{ cv }}: balanced accuracy [95% CI]</th>{% endfor %}</tr></thead>
<tbody>{% for p in k_rows %}<tr><td class="l">{{ p.probe }}</td><td>{{ p.k }}</td>
{% for cv in cvs %}<td>{{ p[cv] }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>

{% for r in top %}{{ section(r, examples[r.latent], histograms[r.latent], logits.get(r.latent), pooling, page_of) }}{% endfor %}

<h2 id="all-latents-head">Every latent that fires ({{ n_firing }} of {{ meta.d_sae }}), by |AUROC - 0.5|</h2>
<p class="meta">Each latent links to its section (histogram, logit effects, examples) on the page of its rank.
{{ meta.d_sae - n_firing }} latents fire on no labelled completion; {{ density_hist.dead if density_hist else 'n/a' }} on no response token of the run.</p>
<div class="scroll"><table id="all-latents">
<thead><tr><th>rank</th><th>latent</th><th>deception AUROC [95% CI]</th><th>q</th><th>held-out-scenario</th><th>"no" vs "yes" AUROC</th><th>within-word AUROC</th><th class="l">word control</th><th>density</th><th class="l">promotes</th><th class="l">suppresses</th></tr></thead>
<tbody>
{% for r in all_rows %}<tr><td>{{ loop.index }}</td><td><a href="{{ page_of[r.latent] }}#latent-{{ r.latent }}">{{ r.latent }}</a></td>
<td>{{ ci(r.auroc, r.auroc_ci_low, r.auroc_ci_high) }}</td><td>{{ '%.2g' % r.q_value }}</td><td>{{ fmt(r.loso_auroc) }}</td>
<td>{{ ci(r.word_auroc, r.word_ci_low, r.word_ci_high) }}</td><td>{{ ci(r.within_word_auroc, r.within_ci_low, r.within_ci_high) }}</td>
<td class="l">{{ verdict(r.word_verdict) }}</td><td>{{ pct(r.density) }}</td>
<td class="l tk">{{ toks((logits.get(r.latent) or {}).get('top', [])[:n_table_tokens]) }}</td>
<td class="l tk">{{ toks((logits.get(r.latent) or {}).get('bottom', [])[:n_table_tokens]) }}</td></tr>
{% endfor %}</tbody></table></div>
<p class="meta">Written by lib/latents/dashboard.py from features/{{ sae_id }}/report.json.</p>
</body></html>
"""
)

PAGE = (
    MACROS
    + HEAD
    + r"""
<h1>SAE features: {{ sae_id }} &middot; latents ranked {{ page.first }}-{{ page.last }}</h1>
<p class="sub">{{ model_label }} &middot; layer {{ layer }} &middot; ranked by |deception AUROC - 0.5| &middot; <a href="../index.html">back to the SAE's page</a></p>
<p class="nav">{% for p in pages %}{% if p.n == page.n %}<b>{{ p.first }}-{{ p.last }}</b> {% else %}<a href="{{ p.file }}">{{ p.first }}-{{ p.last }}</a>{% endif %}{% endfor %}</p>
{% for r in rows %}{{ section(r, examples.get(r.latent, []), histograms.get(r.latent, ''), logits.get(r.latent), pooling, page_of) }}{% endfor %}
<p class="meta">Written by lib/latents/dashboard.py from features/{{ sae_id }}/report.json.</p>
</body></html>
"""
)


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v) -> str:
    return "n/a" if _nan(v) else f"{v:.3f}"


def _pct(v) -> str:
    if _nan(v):
        return "n/a"
    if v == 0:
        return "0%"
    return f"{100 * v:.2g}%" if v < 0.01 else f"{100 * v:.0f}%"


def _shade(act: float, scale: float) -> str:
    """Orange with opacity proportional to the activation (0 = transparent)."""
    a = 0.0 if scale <= 0 else min(max(act / scale, 0.0), 1.0)
    return f"rgba(230, 126, 34, {a:.2f})"


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]``."""
    if not (hi > lo):
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _axes(
    parts, left, top, plot_w, plot_h, xlo, xhi, ylo, yhi, xfmt, yfmt, xlabel, ylabel, xticks=None
):
    """Axis lines, ticks with labels and axis titles of an SVG plot area (``xticks``: the x
    tick values, else round ones)."""
    bottom = top + plot_h
    parts.append(
        f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#888"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#888"/>'
    )
    for t in _nice_ticks(xlo, xhi) if xticks is None else xticks:
        x = left + plot_w * (t - xlo) / (xhi - xlo)
        parts.append(
            f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#888"/>'
            f'<text x="{x:.1f}" y="{bottom + 14}" font-size="9" text-anchor="middle">{xfmt(t)}</text>'
        )
    for t in _nice_ticks(ylo, yhi, 3):
        y = bottom - plot_h * (t - ylo) / (yhi - ylo)
        parts.append(
            f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#888"/>'
            f'<text x="{left - 6}" y="{y + 3:.1f}" font-size="9" text-anchor="end">{yfmt(t)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{bottom + 28}" font-size="10" text-anchor="middle">'
        f"{xlabel}</text>"
        f'<text x="10" y="{top + plot_h / 2}" font-size="10" text-anchor="middle" '
        f'transform="rotate(-90 10 {top + plot_h / 2})">{ylabel}</text>'
    )


def histogram_svg(hist: dict, width: int = 360, height: int = 180) -> str:
    """Inline SVG of one latent's histogram by class: the share of each class's completions per
    bin of the pooled value (so classes of different sizes compare), bars side by side, with
    ticks on both axes."""
    edges = hist["edges"]
    bins = len(edges) - 1
    silent = hist.get("silent") or {}
    share, quiet = {}, {}
    for c in ("deceptive", "honest"):
        total = max(sum(hist[c]), 1)
        counts = list(hist[c])
        counts[0] -= min(silent.get(c, 0), counts[0])  # completions where it never fires: apart
        share[c] = [k / total for k in counts]
        quiet[c] = silent.get(c, 0) / total if c in silent else None
    top = max(max(share["deceptive"]), max(share["honest"]), 1e-9)
    left, ptop, plot_w, plot_h = 44, 10, width - 56, height - 52
    bw = plot_w / bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="histogram by class">'
    ]
    for b in range(bins):
        for j, c in enumerate(("deceptive", "honest")):
            h = plot_h * share[c][b] / top
            x = left + b * bw + j * bw / 2
            parts.append(
                f'<rect x="{x:.1f}" y="{ptop + plot_h - h:.1f}" width="{bw / 2:.1f}" height="{h:.1f}" '
                f'fill="{LABEL_COLOURS[c]}"><title>{c}: {share[c][b]:.0%} in '
                f"[{edges[b]:.3g}, {edges[b + 1]:.3g})</title></rect>"
            )
    _axes(
        parts, left, ptop, plot_w, plot_h, edges[0], edges[-1], 0.0, top,
        lambda t: f"{t:.3g}", lambda t: f"{t:.0%}", "pooled activation", "share of class",
    )  # fmt: skip
    parts += [
        f'<text x="{left + plot_w}" y="{ptop + 8}" font-size="10" text-anchor="end" '
        f'fill="{LABEL_COLOURS["deceptive"]}">deceptive</text>',
        f'<text x="{left + plot_w}" y="{ptop + 20}" font-size="10" text-anchor="end" '
        f'fill="{LABEL_COLOURS["honest"]}">honest</text>',
    ]
    if quiet["deceptive"] is not None:
        parts.append(
            f'<text x="{left + plot_w}" y="{ptop + 32}" font-size="9" text-anchor="end" '
            f'fill="#666">silent (not drawn): {quiet["deceptive"]:.0%} / {quiet["honest"]:.0%}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def density_svg(dh: dict, n_tokens: int | None, width: int = 420, height: int = 220) -> str:
    """The SAE's log-density histogram: latents per bin of log10(share of tokens it fires on)."""
    if not dh or not dh.get("counts"):
        return '<p class="meta">No latent fires.</p>'
    edges, counts = dh["edges"], dh["counts"]
    left, ptop, plot_w, plot_h = 48, 24, width - 62, height - 66
    top = max(max(counts), 1)
    bw = plot_w / len(counts)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="activation density histogram">',
        f'<text x="{left}" y="14" font-size="11">Activation density ({sum(counts)} latents fire'
        f"{f' on {n_tokens} tokens' if n_tokens else ''}; {dh['dead']} never)</text>",
    ]
    for b, c in enumerate(counts):
        h = plot_h * c / top
        parts.append(
            f'<rect x="{left + b * bw:.1f}" y="{ptop + plot_h - h:.1f}" width="{bw - 1:.1f}" '
            f'height="{h:.1f}" fill="#5d7fa3"><title>{c} latents fire on 10^{edges[b]:.2f}'
            f"-10^{edges[b + 1]:.2f} of tokens</title></rect>"
        )
    decades = list(range(math.ceil(edges[0]), 1))  # 10^-k of the tokens, as percentages
    _axes(
        parts, left, ptop, plot_w, plot_h, edges[0], edges[-1], 0, top,
        lambda t: f"{100 * 10**t:g}%", lambda t: f"{t:g}",
        "share of response tokens it fires on (log scale)", "latents", decades,
    )  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def scatter_svg(rows: list[dict], width: int = 420, height: int = 300) -> str:
    """Deception AUROC (x) against "no"-vs-"yes" AUROC (y) of every latent that fires, coloured
    by word verdict: word latents sit far from 0.5 on y."""
    pts = [r for r in rows if not _nan(r["auroc"]) and not _nan(r["word_auroc"])]
    if not pts:
        return '<p class="meta">No answer words to compare with (no completion opens with "no" or "yes").</p>'
    left, ptop, plot_w, plot_h = 48, 38, width - 62, height - 80
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="deception AUROC against word AUROC">',
        f'<text x="{left}" y="14" font-size="11">Deception vs answer word, {len(pts)} latents</text>',
    ]

    half = max(abs(r["auroc"] - 0.5) for r in pts)
    half = min(0.5, max(0.05, math.ceil(half * 1.1 / 0.05) * 0.05))  # x zoomed on the data
    xlo, xhi = 0.5 - half, 0.5 + half

    def xy(a, w):
        return left + plot_w * (a - xlo) / (xhi - xlo), ptop + plot_h * (1 - w)

    x0, y0 = xy(0.5, 0.5)
    parts.append(
        f'<line x1="{x0}" y1="{ptop}" x2="{x0}" y2="{ptop + plot_h}" stroke="#ddd"/>'
        f'<line x1="{left}" y1="{y0}" x2="{left + plot_w}" y2="{y0}" stroke="#ddd"/>'
    )
    order = {"": 0, "untestable": 1, "deception": 2, "word": 3}
    for r in sorted(pts, key=lambda r: order.get(r["word_verdict"], 0)):
        x, y = xy(r["auroc"], r["word_auroc"])
        v = r["word_verdict"] or ""
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{3 if v else 2}" fill="{VERDICT_COLOURS[v]}" '
            f'fill-opacity="0.8"><title>latent {r["latent"]}: deception {r["auroc"]:.3f}, '
            f"word {r['word_auroc']:.3f} {VERDICT_TEXT[v]}</title></circle>"
        )
    _axes(
        parts, left, ptop, plot_w, plot_h, xlo, xhi, 0.0, 1.0,
        lambda t: f"{t:g}", lambda t: f"{t:g}",
        "deception AUROC (deceptive vs honest)", '"no" vs "yes" AUROC',
    )  # fmt: skip
    lx = left
    for v in ("word", "deception", "untestable"):  # the legend, above the plot
        parts.append(
            f'<circle cx="{lx + 3}" cy="25" r="3" fill="{VERDICT_COLOURS[v]}"/>'
            f'<text x="{lx + 9}" y="28" font-size="9">{VERDICT_TEXT[v]}</text>'
        )
        lx += 6 * len(VERDICT_TEXT[v]) + 22
    parts.append("</svg>")
    return "".join(parts)


def _records(table, ids: list[int], labels: dict) -> list[dict]:
    t = table.set_index("latent").loc[ids].reset_index()
    recs = t.to_dict("records")
    for r in recs:
        r["latent"] = int(r["latent"])
        r["label"] = labels.get(r["latent"], "")
        if _nan(r.get("word_verdict")):
            r["word_verdict"] = ""
    return recs


def _visible(text: str) -> str:
    """Control characters other than newline and tab (a model can sample e.g. U+0088) as
    ``\\x88`` escapes, so they do not vanish from the page."""
    return "".join(
        f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c
        for c in text
    )


def shown_tokens(tokens: list[str], acts: list[float]) -> list[tuple[str, float, str]]:
    """``(text, activation, tooltip)`` per shown token: a token that adds no text (the first
    bytes of a character split over tokens, see :func:`lib.latents.effects.token_pieces`) is
    shown with the token that completes the character, at the larger of their activations, the
    tooltip giving each. Control characters are shown as escapes (:func:`_visible`)."""
    out, held = [], []
    for tok, act in zip(tokens, acts, strict=True):
        if tok == "":
            held.append(act)
            continue
        parts = [*held, act]
        tip = " + ".join(f"{a:.4g}" for a in parts) + (
            " (one character, split over tokens)" if held else ""
        )
        out.append((_visible(tok), max(parts), tip))
        held = []
    return out


def _examples(report) -> dict[int, list[dict]]:
    out = {}
    for lat, exs in report.examples.items():
        scale = max((max(e["acts"], default=0.0) for e in exs), default=0.0)
        out[lat] = [
            {**e, "pairs": shown_tokens(e["tokens"], e["acts"]), "scale": scale} for e in exs
        ]
    return out


def _env() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals.update(
        fmt=_fmt,
        pct=_pct,
        shade=_shade,
        zip=zip,
        verdict_text=VERDICT_TEXT,
        verdict_colours=VERDICT_COLOURS,
        colours=LABEL_COLOURS,
        n_table_tokens=N_TABLE_TOKENS,
    )
    return env


def render_pages(report, model_label: str, page_size: int = PAGE_SIZE) -> dict[str, str]:
    """Every file of the dashboard: relative path -> HTML (``index.html`` and
    ``latents/page-NN.html``; see the module docstring)."""
    firing = report.firing_ids()
    top = report.top_table()
    top_recs = _records(report.table, [int(i) for i in top["latent"]], report.labels)
    for r, d in zip(top_recs, top["direction"], strict=True):
        r["direction"] = d
    all_rows = _records(report.table, firing, report.labels)
    n_pages = max(1, math.ceil(len(firing) / page_size))
    pages, page_of = [], {}
    for n in range(n_pages):
        chunk = firing[n * page_size : (n + 1) * page_size]
        file = f"page-{n + 1:02d}.html"
        pages.append(
            {
                "n": n,
                "file": file,
                "href": f"latents/{file}",
                "first": n * page_size + 1,
                "last": n * page_size + len(chunk),
                "ids": chunk,
            }  # fmt: skip
        )
        for lat in chunk:
            page_of[lat] = f"latents/{file}"
    examples = _examples(report)
    hists = {lat: histogram_svg(h) for lat, h in report.histograms.items()}
    logits = {int(k): v for k, v in report.logits.items()}
    ks = report.k_sparse
    cvs = list(dict.fromkeys(ks["cv"]))
    k_rows = []
    for (probe, k), grp in ks.groupby(["probe", "k"], sort=False):
        row = {"probe": probe, "k": int(k)}
        for _, r in grp.iterrows():
            row[r["cv"]] = (
                "n/a"
                if _nan(r["bal_acc"])
                else f"{r['bal_acc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            )
        k_rows.append(row)
    meta = {"answer_words": {"no": 0, "yes": 0}, "word_verdicts": {}, **report.meta}
    common = {
        "sae_id": report.sae_id,
        "layer": report.layer,
        "model_label": model_label,
        "meta": meta,
        "pooling": report.meta.get("pooling", "mean"),
        "examples": examples,
        "histograms": hists,
        "logits": logits,
        "pages": pages,
    }
    env = _env()
    files = {
        "index.html": env.from_string(INDEX).render(
            **common,
            title=f"SAE features: {report.sae_id}",
            top=top_recs,
            has_labels=bool(report.labels),
            cvs=cvs,
            k_rows=k_rows,
            all_rows=all_rows,
            n_firing=len(firing),
            page_of=page_of,
            density_hist=report.density_hist,
            density_svg=density_svg(report.density_hist, report.meta.get("n_tokens")),
            scatter_svg=scatter_svg(all_rows),
            min_per_class=MIN_PER_CLASS,
        )
    }
    local = {lat: "" for lat in firing}  # on a page, sections link within the page
    by_latent = {r["latent"]: r for r in all_rows}
    tpl = env.from_string(PAGE)
    for p in pages:
        files[p["href"]] = tpl.render(
            **common,
            title=f"{report.sae_id}: latents {p['first']}-{p['last']}",
            page=p,
            rows=[by_latent[i] for i in p["ids"]],
            page_of=local,
        )
    return files


def render_dashboard(report, model_label: str) -> str:
    """The HTML of ``index.html`` (see :func:`render_pages` for every file)."""
    return render_pages(report, model_label)["index.html"]


def write_dashboard(path: Path, report, model_label: str, page_size: int = PAGE_SIZE) -> Path:
    """Write every file of the dashboard atomically, ``index.html`` at ``path`` and its pages in
    ``latents/`` beside it (pages left from an earlier, longer dashboard are removed); returns
    ``path``. Files get the ordinary mode (0644 under the usual umask)."""
    path = Path(path)
    files = render_pages(report, model_label, page_size)
    for rel, html in files.items():
        atomic_write_text(path.parent / rel, html)
    folder = path.parent / "latents"
    for old in folder.glob("page-*.html") if folder.is_dir() else []:
        if f"latents/{old.name}" not in files:
            old.unlink()
    if path.name != "index.html":
        atomic_write_text(path, files["index.html"])
    return path
