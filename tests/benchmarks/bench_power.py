"""The simulation table of the book's verdicts: power, false-positive rates and coverage
(:mod:`lib.probing.power`), 400 replications a row (2,000 for the rows that fit probes), about
an hour on 2 cores (the rows that fit probes take most of it).

Writes ``tests/benchmarks/results/power.csv`` (the table ``docs/method.md`` quotes) and prints it
as markdown. Prints, never asserts: the fast known-answer versions are ``tests/unit/test_power.py``.
Run: ``python -m lib.probing.power --reps 400 --out tests/benchmarks/results/power.csv`` or
``pytest tests/benchmarks/bench_power.py -s``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lib.probing import power  # noqa: E402

OUT = ROOT / "tests" / "benchmarks" / "results" / "power.csv"


def test_simulation_table():
    assert power.main(["--reps", "400", "--out", str(OUT)]) == 0


if __name__ == "__main__":
    test_simulation_table()
