#!/usr/bin/env python3
"""The headline figures of an Nsight Compute report's details page (speed of light, memory,
compute, occupancy sections), one block a kernel: duration, clocks, throughputs, L2 hit rate,
issue activity, registers and occupancy.

    tools/gpu_harness/ncu_details.py REPORT.ncu-rep LABEL
"""
import csv
import io
import subprocess
import sys

WANT = ("Duration", "SM Frequency", "DRAM Frequency", "Compute (SM) Throughput", "Memory Throughput",
        "L1/TEX Cache Throughput", "L2 Cache Throughput", "DRAM Throughput", "Executed Ipc Active", "L2 Hit Rate",
        "Mem Busy", "Max Bandwidth", "Mem Pipes Busy", "Issue Slots Busy", "SM Busy", "Registers Per Thread",
        "Achieved Occupancy")


def main(report, label):
    try:
        run = subprocess.run(["ncu", "-i", report, "--page", "details", "--csv"], capture_output=True, text=True)
    except FileNotFoundError:
        print("%s: no ncu on PATH to read %s" % (label, report))
        return 1
    rows = list(csv.reader(io.StringIO(run.stdout)))
    if not rows:
        print("%s: no details in %s (%s)" % (label, report, run.stderr.strip()[:200]))
        return 1
    h = rows[0]
    ki, mi, ui, vi = (h.index(c) for c in ("Kernel Name", "Metric Name", "Metric Unit", "Metric Value"))
    seen = {}
    for r in rows[1:]:
        if r[mi] in WANT:
            seen.setdefault(r[ki][:60], []).append("%s %s %s" % (r[mi], r[vi], r[ui]))
    for kernel, figures in seen.items():
        print(label, kernel)
        print("   " + "; ".join(figures))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    sys.exit(main(sys.argv[1], sys.argv[2]))
