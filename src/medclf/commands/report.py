"""``medclf report``: write a run's ``report.html`` (one self-contained page)."""
from __future__ import annotations

from ..report import write_report


def main(args) -> int:
    """Write the report and print its path."""
    print(write_report(args.run, args.out))
    return 0
