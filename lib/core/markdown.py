"""Markdown tables without an extra dependency (pandas' ``to_markdown`` needs ``tabulate``)."""

from __future__ import annotations

import pandas as pd


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of ``df`` (index left out)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
