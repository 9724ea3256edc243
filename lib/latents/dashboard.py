"""One self-contained HTML page per SAE: ``features/<sae_id>/index.html`` (notebook 08).

The page needs no server and loads nothing from outside: styles are inline, histograms are inline
SVG, there is no script. It opens from the file system in a browser and in JupyterLab (which
shows HTML files rendered, or trusted in an ``IFrame``). It holds

* the top-latent table (``<table id="latent-table">``, one row per top latent in both
  directions: AUROC with its CI, q-value, held-out-scenario AUROC, firing rates, means, label);
* the k-sparse probing table;
* per latent: its histogram by class and its example completions with every response token
  shaded by the latent's activation on it (the exact value in the token's tooltip).

Why not ``sae-dashboard`` (PyPI, 0.8): it recomputes activations by running a TransformerLens
``HookedSAETransformer`` over a token tensor, so it neither reads the run directory (our pooled
statistics, judge labels and stored token activations) nor loads the organism, and it pins
``transformers<4.57`` and ``safetensors<0.5`` (the book runs transformers 5 and safetensors 0.8).
The page here is written with Jinja2 (installed with nbconvert).
"""

from __future__ import annotations

import math
from pathlib import Path

import jinja2

from lib.core.fileio import atomic_write_text
from lib.figures.style import LABEL_COLOURS

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>SAE features: {{ sae_id }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.dec { color: {{ colours.deceptive }}; } .hon { color: {{ colours.honest }}; }
section.latent { border-top: 2px solid #ccc; margin-top: 1.4em; padding-top: 0.4em; }
.row { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; }
.ex { font-family: ui-monospace, monospace; font-size: 0.85em; margin: 4px 0; padding: 4px 6px;
      background: #fafafa; border-left: 4px solid #ccc; }
.toks { white-space: pre-wrap; }
.ex.deceptive { border-left-color: {{ colours.deceptive }}; }
.ex.honest { border-left-color: {{ colours.honest }}; }
.meta { font-family: system-ui, sans-serif; color: #666; font-size: 0.85em; }
.tok { border-radius: 2px; }
</style></head>
<body>
<h1>SAE features: {{ sae_id }}</h1>
<p class="sub">{{ model_label }} &middot; layer {{ layer }} &middot; n = {{ meta.n }} completions
({{ meta.n_deceptive }} deceptive, {{ meta.n_honest }} honest; judge {{ meta.judge }}) &middot;
d_sae {{ meta.d_sae }} &middot; codes of every response token, {{ meta.pooling }}-pooled per completion
&middot; {{ meta.n_significant }} latents with q &lt; 0.05 (Benjamini-Hochberg)</p>

<h2>Top latents</h2>
<table id="latent-table">
<thead><tr><th>latent</th><th class="l">direction</th><th>AUROC</th><th>95% CI</th><th>q</th>
<th>held-out-scenario AUROC</th><th>fires (dec / hon)</th><th>mean (dec / hon)</th>
<th class="l">label</th></tr></thead>
<tbody>
{% for r in top %}<tr class="latent-row">
<td><a href="#latent-{{ r.latent }}">{{ r.latent }}</a></td>
<td class="l {{ 'dec' if r.direction == 'deceptive' else 'hon' }}">{{ r.direction }}-high</td>
<td>{{ '%.3f' % r.auroc }}</td><td>[{{ '%.3f' % r.auroc_ci_low }}, {{ '%.3f' % r.auroc_ci_high }}]</td>
<td>{{ '%.2g' % r.q_value }}</td><td>{{ fmt(r.loso_auroc) }}</td>
<td>{{ '%.0f%%' % (100 * r.rate_deceptive) }} / {{ '%.0f%%' % (100 * r.rate_honest) }}</td>
<td>{{ '%.3g' % r.mean_deceptive }} / {{ '%.3g' % r.mean_honest }}</td>
<td class="l">{{ r.label }}</td></tr>
{% endfor %}</tbody></table>

<h2>How few latents carry the signal (k-sparse probes)</h2>
<table id="k-sparse-table">
<thead><tr><th class="l">probe</th><th>k</th>{% for cv in cvs %}<th>{{ cv }}: balanced accuracy [95% CI]</th>{% endfor %}</tr></thead>
<tbody>{% for p in k_rows %}<tr><td class="l">{{ p.probe }}</td><td>{{ p.k }}</td>
{% for cv in cvs %}<td>{{ p[cv] }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>

{% for r in top %}
<section class="latent" id="latent-{{ r.latent }}">
<h2>Latent {{ r.latent }} <span class="{{ 'dec' if r.direction == 'deceptive' else 'hon' }}">({{ r.direction }}-high)</span>{% if r.label %}: {{ r.label }}{% endif %}</h2>
<p class="meta">AUROC {{ '%.3f' % r.auroc }} [{{ '%.3f' % r.auroc_ci_low }}, {{ '%.3f' % r.auroc_ci_high }}],
q = {{ '%.2g' % r.q_value }}, held-out-scenario AUROC {{ fmt(r.loso_auroc) }}</p>
<div class="row"><div>{{ histograms[r.latent] | safe }}</div>
<div style="flex: 1; min-width: 500px">
{% for ex in examples[r.latent] %}<div class="ex {{ ex.label }}"><div class="meta">{{ ex.kind }} &middot; {{ ex.id }} &middot; {{ ex.label }} &middot; max {{ '%.3g' % ex.max }}, {{ pooling }} {{ '%.3g' % ex.pooled }}</div>
<span class="toks">{% for tok, act in ex.pairs %}<span class="tok" title="{{ '%.4g' % act }}" style="background: {{ shade(act, ex.scale) }}">{{ tok }}</span>{% endfor %}</span></div>
{% else %}<p class="meta">This latent fires on no completion.</p>{% endfor %}
</div></div></section>
{% endfor %}
<p class="meta">Written by lib/latents/dashboard.py from features/{{ sae_id }}/report.json.</p>
</body></html>
"""


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _shade(act: float, scale: float) -> str:
    """Orange with opacity proportional to the activation (0 = transparent)."""
    a = 0.0 if scale <= 0 else min(max(act / scale, 0.0), 1.0)
    return f"rgba(230, 126, 34, {a:.2f})"


def histogram_svg(hist: dict, width: int = 340, height: int = 150) -> str:
    """Inline SVG of one latent's histogram by class: the share of each class's completions per
    bin of the pooled value (so classes of different sizes compare), bars side by side."""
    edges = hist["edges"]
    bins = len(edges) - 1
    share = {}
    for c in ("deceptive", "honest"):
        total = max(sum(hist[c]), 1)
        share[c] = [k / total for k in hist[c]]
    top = max(max(share["deceptive"]), max(share["honest"]), 1e-9)
    left, plot_w, plot_h = 36, width - 46, height - 44
    bw = plot_w / bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="histogram by class">',
        f'<line x1="{left}" y1="{10 + plot_h}" x2="{left + plot_w}" y2="{10 + plot_h}" stroke="#999"/>',
    ]
    for b in range(bins):
        for j, c in enumerate(("deceptive", "honest")):
            h = plot_h * share[c][b] / top
            x = left + b * bw + j * bw / 2
            parts.append(
                f'<rect x="{x:.1f}" y="{10 + plot_h - h:.1f}" width="{bw / 2:.1f}" height="{h:.1f}" '
                f'fill="{LABEL_COLOURS[c]}"><title>{c}: {share[c][b]:.0%} in '
                f"[{edges[b]:.3g}, {edges[b + 1]:.3g})</title></rect>"
            )
    parts += [
        f'<text x="{left}" y="{height - 8}" font-size="10">{edges[0]:.3g}</text>',
        f'<text x="{left + plot_w}" y="{height - 8}" font-size="10" text-anchor="end">'
        f"{edges[-1]:.3g}</text>",
        f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="10" text-anchor="middle">'
        "pooled activation</text>",
        f'<text x="4" y="18" font-size="10">{top:.0%}</text>',
        f'<text x="{left + plot_w}" y="20" font-size="10" text-anchor="end" '
        f'fill="{LABEL_COLOURS["deceptive"]}">deceptive</text>',
        f'<text x="{left + plot_w}" y="32" font-size="10" text-anchor="end" '
        f'fill="{LABEL_COLOURS["honest"]}">honest</text>',
        "</svg>",
    ]
    return "".join(parts)


def render_dashboard(report, model_label: str) -> str:
    """The HTML page of a :class:`lib.latents.separating.LatentReport` (a string; see the module docstring)."""
    top = report.top_table().to_dict("records")
    examples = {}
    for lat, exs in report.examples.items():
        scale = max((max(e["acts"], default=0.0) for e in exs), default=0.0)
        examples[lat] = [
            {**e, "pairs": list(zip(e["tokens"], e["acts"], strict=True)), "scale": scale}
            for e in exs
        ]
    ks = report.k_sparse
    cvs = list(dict.fromkeys(ks["cv"]))
    k_rows = []
    for (probe, k), grp in ks.groupby(["probe", "k"], sort=False):
        row = {"probe": probe, "k": int(k)}
        for _, r in grp.iterrows():
            row[r["cv"]] = (
                "n/a"
                if math.isnan(r["bal_acc"])
                else f"{r['bal_acc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            )
        k_rows.append(row)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(
        sae_id=report.sae_id,
        layer=report.layer,
        model_label=model_label,
        meta=report.meta,
        pooling=report.meta.get("pooling", "mean"),
        top=top,
        examples=examples,
        histograms={lat: histogram_svg(h) for lat, h in report.histograms.items()},
        cvs=cvs,
        k_rows=k_rows,
        colours=LABEL_COLOURS,
        fmt=_fmt,
        shade=_shade,
    )


def write_dashboard(path: Path, report, model_label: str) -> Path:
    """Render and write the page atomically to ``path`` (``features/<sae_id>/index.html``)."""
    atomic_write_text(Path(path), render_dashboard(report, model_label))
    return Path(path)
