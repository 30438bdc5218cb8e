#!/usr/bin/env python3
"""Re-choose tune-table entries from one device call's timings: for each case that `moeq bench
apply --json` timed with the shipped plan (the table), with the heuristics alone and with a
candidate plan (e.g. MOEQ_CT_WS_PINGPONG=1, whose device checks must all have passed: in the
candidate's own run, or in --candidate-checks, a checked run of the same plan), the
fastest of the three takes the entry where it beats the shipped time by more than --margin; the
entry then records its time and the heuristics' time from the same call. Tiles are read from the
rows' "tiles" (tile_heuristics.cpp's describe()).

  adopt_ab.py TABLE --shipped S.json --heuristic H.json --candidate C.json [--candidate-checks K.json]
              [--margin 0.02] [--write]
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


def rows(path, checks=None):
    """The timed rows of `path` by case; where `checks` names a file, none unless its checks all
    passed (a --no-check run says null, which is not a pass)."""
    doc = json.load(open(path))
    if checks is not None and json.load(open(checks)).get("checks_passed") is not True:
        print("%s: the device checks did not all pass (or did not run): the tiles of %s are not taken" % (checks, path))
        return {}
    out = {}
    for r in doc["rows"]:
        if r["us"] > 0 and (r.get("check") is None or r["check"].get("passed") is True):
            out[(r["E"], r["top_k"], r["H"], r["I"], r["scheme"], r["m"])] = r
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("table")
    ap.add_argument("--shipped", required=True)
    ap.add_argument("--heuristic", required=True)
    ap.add_argument("--candidate", required=True)
    ap.add_argument("--candidate-checks", help="a checked run of the candidate's plan (default: --candidate's own)")
    ap.add_argument("--margin", type=float, default=0.02)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    table = json.load(open(a.table))
    base, heur, cand = rows(a.shipped), rows(a.heuristic), rows(a.candidate, checks=a.candidate_checks or a.candidate)
    changed = 0
    for key, b in sorted(base.items()):
        E, k, H, I, scheme, m = key
        match = [e for e in table["entries"] if (e["experts"], e["top_k"], e["hidden"], e["inter"], e["m"]) == (E, k, H, I, m)
                 and e["scheme"].startswith(SCHEME[scheme])]
        if len(match) != 1 or key not in heur:
            continue
        e = match[0]
        best = min([("heuristic", heur[key])] + ([("candidate", cand[key])] if key in cand else []), key=lambda t: t[1]["us"])
        if best[1]["us"] >= b["us"] * (1 - a.margin):
            continue
        new = bucket_of(best[1]["tiles"])
        if (new["bm"], new["gemm1"], new["gemm2"]) == (e["bm"], e["gemm1"], e["gemm2"]):
            continue  # the same tiles: the difference is noise
        print("%-16s %-12s M=%-5d shipped %8.1f, heuristic %8.1f, candidate %8.1f us -> %s: bm %d %s | %s  ->  bm %d %s | %s" % (
            b["shape"], scheme, m, b["us"], heur[key]["us"], cand[key]["us"] if key in cand else 0, best[0],
            e["bm"], e["gemm1"], e["gemm2"], new["bm"], new["gemm1"], new["gemm2"]))
        e.update(new)
        e["us"] = round(best[1]["us"], 1)
        e["heuristic_us"] = round(heur[key]["us"], 1)
        changed += 1
    print("%d entries changed (margin %.0f %%)" % (changed, 100 * a.margin))
    if a.write and changed:
        with open(a.table, "w") as f:
            f.write('{"format": "%s", "entries": [\n' % table["format"])
            f.write(",\n".join("  " + json.dumps(e) for e in table["entries"]))
            f.write("\n]}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
