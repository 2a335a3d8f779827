"""Wall time of the commands that should answer at once: `curb --help`, `curb methods`,
`curb datasets`, `curb data list`.

Each command runs in a fresh interpreter, as typed by a user (`python -m curb ...`), `--repeat`
times; the table gives the median and the fastest run. The first row is the bare interpreter
start, the floor any command pays.

Usage:  python benchmarks/cli_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from tabulate import tabulate

COMMANDS = (["--help"], ["methods"], ["datasets"], ["data", "list"])


def wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    runs = {"python -c pass": ["-c", "pass"], **{"curb " + " ".join(c): ["-m", "curb", *c] for c in COMMANDS}}
    wall(runs["curb methods"])  # warm the file cache once
    rows = []
    for label, argv in runs.items():
        times = [wall(argv) for _ in range(args.repeat)]
        rows.append([label, f"{statistics.median(times):.2f}", f"{min(times):.2f}", len(times)])
    print(tabulate(rows, headers=["command", "median s", "min s", "runs"], tablefmt="github"))


if __name__ == "__main__":
    main()
