#!/usr/bin/env python3
"""Adopt measured tiles into the shipped tune table: where `moeq bench apply --json` of a
candidate plan (e.g. MOEQ_CT_WS_PINGPONG=1) timed a case faster than the shipped plan in the same
device call, by more than --margin, that case's table entry takes the candidate's tiles (parsed
from the row's "tiles", which tile_heuristics.cpp's describe() writes) and its time.

  adopt_ab.py TABLE SHIPPED.json CANDIDATE.json [--margin 0.02] [--write]
"""
import argparse
import json
import re

KERNEL = {"wgmma-ws-pingpong": "ws-pingpong", "wgmma-ws": "ws", "wgmma": "wgmma", "wgmma-serial": "wgmma-serial",
          "mma": "mma"}
SCHEME = {"bf16": "bf16.", "fp8-channel": "fp8.wchannel.atoken", "fp8-block": "fp8.wblock.", "w8a16": "w8a16.",
          "fp8-tensor": "fp8.wtensor.atensor"}


def bucket_of(tiles):
    found = re.findall(r"gemm([12]) (\S+) (\d+)x(\d+) w(\d+)x(\d+) s(\d+)", tiles)
    if len(found) != 2 or "split-K" in tiles:
        raise ValueError("cannot read tiles %r" % tiles)
    out = {}
    for g, kernel, bm, bn, wm, wn, st in found:
        out["bm"] = int(bm)
        out["gemm" + g] = "%s %s w%sx%s s%s" % (KERNEL[kernel], bn, wm, wn, st)
    return out


def rows(path):
    return {(r["E"], r["top_k"], r["H"], r["I"], r["scheme"], r["m"]): r for r in json.load(open(path))["rows"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("table")
    ap.add_argument("shipped")
    ap.add_argument("candidate")
    ap.add_argument("--margin", type=float, default=0.02)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    table = json.load(open(a.table))
    base, cand = rows(a.shipped), rows(a.candidate)
    changed = 0
    for key, c in sorted(cand.items()):
        b = base.get(key)
        if b is None or c["us"] <= 0 or c.get("check") not in (None, "pass", "passed", True, "ok"):
            continue
        if c["us"] >= b["us"] * (1 - a.margin):
            continue
        E, k, H, I, scheme, m = key
        match = [e for e in table["entries"] if (e["experts"], e["top_k"], e["hidden"], e["inter"], e["m"]) == (E, k, H, I, m)
                 and e["scheme"].startswith(SCHEME[scheme])]
        if len(match) != 1:
            print("no single table entry for %s" % (key,))
            continue
        e = match[0]
        new = bucket_of(c["tiles"])
        print("%-10s %-12s M=%-5d %8.1f -> %8.1f us: bm %d %s | %s  ->  bm %d %s | %s" % (
            b["shape"], scheme, m, b["us"], c["us"], e["bm"], e["gemm1"], e["gemm2"], new["bm"], new["gemm1"], new["gemm2"]))
        e.update(new)
        e["us"] = round(c["us"], 1)
        changed += 1
    print("%d entries changed" % changed)
    if a.write and changed:
        with open(a.table, "w") as f:
            json.dump(table, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
