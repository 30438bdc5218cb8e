#!/usr/bin/env python3
"""Disassemble the CUBINs of a moeq JIT cache (MOEQ_CACHE_DIR) with nvdisasm and summarize them.

The cache's files are a moeq header followed by the ELF; this finds the ELF, runs nvdisasm on it
(NVDISASM, else `nvdisasm` on PATH: the CUDA toolkit's, or the `nvidia-cuda-nvdisasm` wheel's
nvidia/cu13/bin/nvdisasm), and prints one line a CUBIN: its kernels, SASS instruction count and
the opcodes that tell a GEMM's shape (MMAs, conversions, branch regions, calls). --sass DIR also
writes each disassembly there.

    tools/gpu_harness/cache_sass.py CACHE_DIR [--arch sm_90a] [--sass DIR] [--grep TEXT]
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

MARKS = ("HGMMA", "QGMMA", "HMMA", "QMMA", "IMMA", "F2FP.F16.E4M3.UNPACK", "MUFU", "BSSY", "CALL", "STG", "LDGSTS",
         "UTMALDG", "SYNCS")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache")
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--sass", help="write each disassembly into this folder")
    ap.add_argument("--grep", help="only CUBINs whose disassembly contains this text")
    args = ap.parse_args()
    tool = os.environ.get("NVDISASM") or shutil.which("nvdisasm")
    if not tool:
        sys.exit("cache_sass.py: no nvdisasm (set NVDISASM, or put the CUDA toolkit's or the nvidia-cuda-nvdisasm "
                 "wheel's bin on PATH)")
    files = sorted(glob.glob(os.path.join(args.cache, "jit", "v*", args.arch, "*", "*.cubin")))
    if not files:
        sys.exit("cache_sass.py: no %s CUBINs under %s" % (args.arch, args.cache))
    if args.sass:
        os.makedirs(args.sass, exist_ok=True)
    for f in files:
        blob = open(f, "rb").read()
        at = blob.find(b"\x7fELF")
        if at < 0:
            print("%s: no ELF inside" % f)
            continue
        with tempfile.NamedTemporaryFile(suffix=".elf") as t:
            t.write(blob[at:])
            t.flush()
            run = subprocess.run([tool, "-c", t.name], capture_output=True, text=True)
        if run.returncode != 0:
            print("%s: nvdisasm failed: %s" % (f, run.stderr.strip()[:200]))
            continue
        sass = run.stdout
        if args.grep and args.grep not in sass:
            continue
        kernels = sorted(set(re.findall(r"\.text\.(\w+)", sass)))
        count = len(re.findall(r"^\s*/\*[0-9a-f]{4,}\*/", sass, re.M))
        ops = " ".join("%s:%d" % (m, sass.count(m)) for m in MARKS if m in sass)
        name = os.path.basename(f)
        print("%s %-24s %6d instructions  %s" % (name[:12], ",".join(kernels)[:24], count, ops))
        if args.sass:
            open(os.path.join(args.sass, name + ".sass"), "w").write(sass)
    return 0


if __name__ == "__main__":
    sys.exit(main())
