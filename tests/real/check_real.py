#!/usr/bin/env python3
"""Check a layersweep output on the real model against transformers' float64 forward.

    check_real.py OUT.h5 [--ref DIR] [--identical OTHER.h5] [--factor 4] [--floor 1e-6]

OUT.h5 is `layersweep run --model <fetch_model.py dir> --data tests/real/prompts.jsonl
--hooks all --pool none --layers 0,1,2,10,11,20,28,29` (any superset of those layers
works). DIR (default: this script's folder) holds reference.safetensors and
reference.json written by gen_reference.py.

For every hook and reference layer the row-wise relative error of layersweep against
the float64 reference, e = ||a - a64|| / ||a64|| per token row, is printed beside the
same error of transformers' own float32 forward (on the same weights and prompts) and
their ratio. The check fails (exit 1) when for any hook and layer

    max_rows e  >  max(FACTOR * transformers_f32_max, FLOOR)

Why that bound: a correct float32 forward differs from float64 only by rounding, and
two float32 implementations that round in different orders (OpenBLAS's sgemm kernels
vs PyTorch's, fused or not) land within a small factor of each other (measured:
0.5-2.0x with OpenBLAS's SkylakeX kernels, 0.3-2.7x over its SkylakeX, Haswell,
Sandybridge and Prescott kernels); FACTOR 4 leaves room for other CPUs. FLOOR
(1e-6, about 16 float32 ulps row-wise) is for hooks where transformers' error is
~0 (the embedding rows of residual_pre 0 are exact). Real mistakes are orders of
magnitude above it: a hook taken one layer off, a wrong weight, eps or rope theta
gives 1e-4 .. 1e2 (tests/real/README.md lists what was tried).

--identical OTHER.h5 also requires every activation and sample dataset of OTHER.h5
to be bit-identical to OUT.h5's (the MPI check: same file for 1 and 2 ranks).
Needs numpy, h5py, safetensors (numpy API).
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np
from safetensors.numpy import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
HOOKS = ["residual_pre", "attn_out", "mlp_out", "residual_post"]


def fail(msg):
    print(f"check_real: FAILED: {msg}", flush=True)
    sys.exit(1)


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def rowwise(a, ref):
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    return np.linalg.norm(a - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-300)


def check_identical(a_path, b_path):
    """Every dataset of a_path but /profile/* and dimension scales (/rank has one entry
    per rank) must be in b_path with the same type, shape, bytes and "layers"."""
    names = []
    with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset) or name.startswith("profile"):
                return
            if text(obj.attrs.get("CLASS", b"")) == "DIMENSION_SCALE":
                return
            names.append(name)
        a.visititems(visit)
        for need in HOOKS + ["final_norm", "samples/offsets"]:
            if need not in names:
                fail(f"{a_path} has no dataset {need}")
        for n in names:
            if n not in b:
                fail(f"{b_path} has no dataset {n}")
            x, y = a[n][()], b[n][()]
            if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
                d = ""
                if x.shape == y.shape and x.dtype.kind == "f":
                    d = f", max |diff| {np.abs(x.astype(np.float64) - y).max():.3e}"
                fail(f"{n} differs between {a_path} and {b_path}{d}")
            if "layers" in a[n].attrs and list(a[n].attrs["layers"]) != list(b[n].attrs.get("layers", [])):
                fail(f"{n}.attrs['layers'] differs between the two files")
    print(f"check_real: {len(names)} datasets bit-identical ({', '.join(names)}): "
          f"{a_path} == {b_path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="layersweep HDF5 output")
    ap.add_argument("--ref", default=HERE, help="folder with reference.safetensors/.json")
    ap.add_argument("--identical", metavar="OTHER", help="also require OTHER to be bit-identical")
    ap.add_argument("--factor", type=float, default=4.0,
                    help="bound = max(FACTOR * transformers' float32 max error, FLOOR) (default 4)")
    ap.add_argument("--floor", type=float, default=1e-6, help="absolute floor of the bound (1e-6)")
    ap.add_argument("--json", metavar="FILE", help="also write the table as JSON")
    a = ap.parse_args()

    meta = json.load(open(os.path.join(a.ref, "reference.json")))
    ref = load_file(os.path.join(a.ref, "reference.safetensors"))
    offsets = ref["offsets"]
    n_rows = int(offsets[-1])
    tf32 = meta["transformers_f32"]
    problems, rows = [], []

    with h5py.File(a.out, "r") as f:
        st = text(f.attrs.get("status", b"?"))
        if st != "complete":
            fail(f"{a.out}: status is {st!r}, not 'complete'")
        if text(f.attrs.get("pool", b"?")) != "none":
            fail(f"{a.out}: pool is {text(f.attrs.get('pool', b'?'))!r}; run with --pool none")
        if text(f.attrs.get("compute_dtype", b"float32")) != "float32":
            print(f"check_real: note: compute_dtype {text(f.attrs['compute_dtype'])}")
        got_off = f["samples/offsets"][()]
        if got_off.tolist() != offsets.tolist():
            fail(f"/samples/offsets {got_off.tolist()} != reference {offsets.tolist()}: "
                 "run on tests/real/prompts.jsonl")
        ids = [text(x) for x in f["samples/id"][()]] if "samples/id" in f else None
        want_ids = [p["id"] for p in meta["prompts"]]
        if ids != want_ids:
            fail(f"/samples/id {ids} != {want_ids}")

        def judge(hook, L, got, want):
            if got.shape != (n_rows, want.shape[1]):
                fail(f"/{hook} layer {L}: shape {got.shape}, expected {(n_rows, want.shape[1])}")
            if not np.isfinite(got).all():
                problems.append(f"{hook} layer {L}: NaN or Inf")
            e = rowwise(got, want)
            t = tf32[hook] if L is None else tf32[hook][str(L)]
            bound = max(a.factor * t["max"], a.floor)
            ratio = e.max() / t["max"] if t["max"] > 0 else (0.0 if e.max() == 0 else float("inf"))
            mratio = float(np.median(e) / t["median"]) if t["median"] > 0 else 0.0
            ok = bool(e.max() <= bound)
            r = int(e.argmax())
            p = int(np.searchsorted(offsets, r, side="right") - 1)
            rows.append({"hook": hook, "layer": L, "ls_max": float(e.max()),
                         "ls_median": float(np.median(e)), "tf32_max": t["max"],
                         "tf32_median": t["median"], "ratio": float(ratio),
                         "median_ratio": mratio, "bound": bound,
                         "ok": ok, "worst_row": r, "worst_prompt": want_ids[p],
                         "worst_pos": r - int(offsets[p])})
            if not ok:
                problems.append(f"{hook} layer {L}: row-wise relative error {e.max():.3e} "
                                f"(row {r}: prompt {want_ids[p]} position {r - int(offsets[p])}) "
                                f"> bound {bound:.3e} (= max({a.factor:g} x transformers' float32 "
                                f"{t['max']:.3e}, {a.floor:g}))")

        for hook in HOOKS:
            if hook not in f:
                fail(f"{a.out} has no /{hook}: run with --hooks all")
            ds = f[hook]
            layers = [int(x) for x in ds.attrs["layers"]]
            for L in meta["layers"]:
                if L not in layers:
                    fail(f"/{hook} lacks layer {L} (has {layers}); run with --layers "
                         + ",".join(map(str, meta["layers"])))
                want = ref[f"hidden_states.{L + 1}" if hook == "residual_post" else
                           f"hidden_states.{L}" if hook == "residual_pre" else f"{hook}.{L}"]
                judge(hook, L, ds[layers.index(L)], want)
        if "final_norm" not in f:
            fail(f"{a.out} has no /final_norm: run with --hooks all")
        judge("final_norm", None, f["final_norm"][()], ref["final_norm"])

    print(f"check_real: {a.out} vs transformers float64 ({meta['versions']['transformers']}), "
          f"{len(offsets) - 1} prompts, {n_rows} rows; row-wise relative error")
    print(f"{'hook':14s} {'layer':>5s} {'layersweep max':>14s} {'median':>9s} "
          f"{'tf-f32 max':>10s} {'median':>9s} {'ratio':>6s} {'(med)':>5s} {'bound':>9s}  worst row")
    for r in rows:
        L = "-" if r["layer"] is None else str(r["layer"])
        print(f"{r['hook']:14s} {L:>5s} {r['ls_max']:14.3e} {r['ls_median']:9.2e} "
              f"{r['tf32_max']:10.3e} {r['tf32_median']:9.2e} {r['ratio']:6.2f} {r['median_ratio']:5.2f} "
              f"{r['bound']:9.2e}  {r['worst_prompt']}:{r['worst_pos']}"
              f"{'' if r['ok'] else '  FAIL'}")
    by_hook = {}
    for r in rows:
        if r["tf32_max"] > 0:
            by_hook.setdefault(r["hook"], []).append((r["ratio"], r["median_ratio"]))
    print("ratio layersweep / transformers-f32, per hook, min..max over layers: max error: " +
          ", ".join(f"{h} {min(v)[0]:.2f}..{max(v)[0]:.2f}" for h, v in by_hook.items()))
    print("                                                          median error: " +
          ", ".join(f"{h} {min(x[1] for x in v):.2f}..{max(x[1] for x in v):.2f}"
                    for h, v in by_hook.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    if a.identical:
        check_identical(a.out, a.identical)
    if problems:
        for p in problems:
            print(f"check_real: FAILED: {p}")
        print(f"check_real: FAILED: {len(problems)} of {len(rows)} (hook, layer) checks over the bound")
        sys.exit(1)
    print(f"check_real: OK: {len(rows)} (hook, layer) checks within max({a.factor:g} x "
          f"transformers' float32 error, {a.floor:g})")


if __name__ == "__main__":
    main()
