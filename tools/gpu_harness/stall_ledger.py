#!/usr/bin/env python3
"""Summarize an Nsight Compute source page (ncu -i REP --page source --csv --print-source sass):
the columns it has, then the SASS instructions with the most warp-state samples, each with its
share of all samples and the opcode, so that the waits of a kernel can be told apart by role
(mbarrier waits, wgmma waits, gathers, epilogue stores)."""
import csv
import sys


def main(path, top=30):
    rows = list(csv.reader(open(path, newline="", errors="replace")))
    head = next((i for i, r in enumerate(rows) if any("Source" == c.strip() for c in r)), None)
    if head is None:
        print("no header with a Source column; first lines:")
        for r in rows[:5]:
            print("  ", r[:8])
        return 1
    cols = rows[head]
    print("columns:", "; ".join(c for c in cols if c))
    src = cols.index("Source")
    samp = [i for i, c in enumerate(cols) if "Warp Stall Sampling (All" in c]
    nis = [i for i, c in enumerate(cols) if "Warp Stall Sampling (Not" in c]
    if not samp:
        print("no warp stall sampling column")
        return 1

    def num(r, i):
        try:
            return float(r[i].replace(",", ""))
        except (ValueError, IndexError):
            return 0.0

    body = [r for r in rows[head + 1:] if len(r) > src]
    total = sum(num(r, samp[0]) for r in body) or 1.0
    print("instructions %d, samples %d" % (len(body), total))
    ranked = sorted(range(len(body)), key=lambda i: -num(body[i], samp[0]))
    for i in ranked[:top]:
        r = body[i]
        s = num(r, samp[0])
        n = num(r, nis[0]) if nis else 0.0
        print("%5.1f%% (not issued %4.1f%%) #%d %s" % (100 * s / total, 100 * n / total, i, r[src].strip()[:90]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
