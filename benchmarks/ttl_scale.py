"""Building the TTL-shaped stream: wall time and peak memory at several fractions of its users.

Each build runs in a fresh interpreter so its peak resident memory is its own (from the child's
rusage); growth should be linear in the users. Usage:

    python benchmarks/ttl_scale.py [--fractions 0.01,0.02,0.05]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from tabulate import tabulate

CHILD = "from curb.datasets.ttl_shaped import generate; s = generate({f}); print(s.n_users)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", default="0.01,0.02,0.05")
    args = ap.parse_args()
    rows = []
    for f in (float(x) for x in args.fractions.split(",")):
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", CHILD.format(f=f)], stdout=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        out = p.stdout.read().strip()
        if status != 0:
            raise SystemExit(f"build of fraction {f} failed (status {status})")
        rows.append([f"{f:.0%}", int(out), f"{time.perf_counter() - t0:.1f}", f"{usage.ru_maxrss / 2**20:.2f}"])
    base_users, base_mem = rows[0][1], float(rows[0][3])
    for r in rows:
        r.append(f"{r[1] / base_users:.1f}")
        r.append(f"{float(r[3]) / base_mem:.2f}")
    print("TTL-shaped stream build (646 K items, 100-item sequences, 6 tasks), one process per build")
    print(tabulate(rows, headers=["users", "count", "seconds", "peak GiB", "users ratio", "memory ratio"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
