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
    # The samples by stall reason (the stall_* columns, all samples), largest first.
    reasons = [(c, i) for i, c in enumerate(cols) if c.startswith("stall_") and "Not Issued" not in c]
    if reasons:
        sums = sorted(((sum(num(r, i) for r in body), c) for c, i in reasons), reverse=True)
        print("by reason: " + ", ".join("%s %.1f%%" % (c[6:], 100 * v / total) for v, c in sums if v >= 0.005 * total))
    # Warp-specialized kernels: the producer's code follows its register release
    # (USETMAXREG.DEALLOC), the consumers' its register claim; the samples of each side.
    dealloc = next((i for i, r in enumerate(body) if "USETMAXREG.DEALLOC" in r[src]), None)
    if dealloc is not None:
        prod = sum(num(r, samp[0]) for r in body[dealloc:])
        print("producer (from #%d) %.1f%%, consumers and prologue %.1f%%" % (dealloc, 100 * prod / total,
                                                                          100 * (total - prod) / total))
        # The consumers' K loop, roughly: from 48 instructions before their first warpgroup MMA
        # (the full-stage wait) to their last MMA wait; the rest of their code is the tile's
        # start and epilogue, where the tensor cores idle unless another warpgroup's MMAs run.
        mma = [i for i, r in enumerate(body[:dealloc]) if "GMMA" in r[src]]
        waits = [i for i, r in enumerate(body[:dealloc]) if "WARPGROUP.DEPBAR" in r[src]]
        if mma and waits:
            lo, hi = max(0, mma[0] - 48), max(waits) + 1
            loop = sum(num(r, samp[0]) for r in body[lo:hi])
            rest = total - prod - loop
            print("consumers: K loop (#%d-#%d) %.1f%%, elsewhere (start, epilogue) %.1f%%" % (
                lo, hi - 1, 100 * loop / total, 100 * rest / total))
    ranked = sorted(range(len(body)), key=lambda i: -num(body[i], samp[0]))
    for i in ranked[:top]:
        r = body[i]
        s = num(r, samp[0])
        n = num(r, nis[0]) if nis else 0.0
        print("%5.1f%% (not issued %4.1f%%) #%d %s" % (100 * s / total, 100 * n / total, i, r[src].strip()[:90]))
    # Where the samples fall along the code: blocks of `width` consecutive instructions with at
    # least 0.5 % of them, each with the opcodes that tell its role (MMAs, their waits, mbarrier
    # waits, gathers, global stores and loads, special functions, block barriers).
    width = 48
    marks = ("HGMMA", "WARPGROUP", "SYNCS", "LDGSTS", "STG", "LDG", "MUFU", "BAR", "SHFL", "F2FP")
    print("by block of %d instructions (blocks with >= 0.5 %% of the samples):" % width)
    for b0 in range(0, len(body), width):
        blk = body[b0:b0 + width]
        s = sum(num(r, samp[0]) for r in blk)
        if s < 0.005 * total:
            continue
        ops = {}
        for r in blk:
            tok = r[src].split()
            op = (tok[1] if len(tok) > 1 and tok[0].startswith("@") else tok[0]) if tok else ""
            for m in marks:
                if op.startswith(m):
                    ops[m] = ops.get(m, 0) + 1
        print("  #%5d-%5d %5.1f%%  %s" % (b0, b0 + len(blk) - 1, 100 * s / total,
                                        " ".join("%s:%d" % kv for kv in sorted(ops.items()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
