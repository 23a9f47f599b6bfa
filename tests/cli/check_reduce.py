#!/usr/bin/env python3
"""Check a layersweep output's /reductions against numpy on the rows the same run stored.

usage: check_reduce.py OUT.h5 [--project PROJ.h5]

For every hook with stored activations: mean and cov to 1e-9 relative (numpy.cov, ddof 1),
class means / diff_of_means to 1e-9, PCA eigenvalues to 1e-8 relative and the subspace of
the leading components (|cos| of each component with numpy's eigenvector, where its
eigenvalue is separated from the next) to 1e-8. With --project: PROJ.h5's stored rows are
this file's rows times PROJ's /project/directions (float64 sums, float32 storage) to 1e-6.
Exit 1 with the first failure named."""
import sys

import h5py
import numpy as np


def fail(msg):
    print("check_reduce: FAIL: " + msg)
    sys.exit(1)


def rel(a, b):
    scale = max(np.abs(b).max(), 1e-300)
    return float(np.abs(a - b).max() / scale)


def check_file(path):
    f = h5py.File(path, "r")
    red = f["reductions"]
    labels = f["samples/label"][()] if "samples/label" in f else None
    raw = f.attrs["pool"] in (b"none", "none")
    lengths = f["samples/length"][()]
    checked = 0
    for hook in red:
        g = red[hook]
        # every axis named (xarray / h5netcdf refuse a mix of named and unnamed axes)
        for name, ds in g.items():
            if not isinstance(ds, h5py.Dataset) or ds.attrs.get("CLASS") == b"DIMENSION_SCALE":
                continue
            for ax in range(ds.ndim):
                if len(ds.dims[ax]) == 0:
                    fail(f"/reductions/{hook}/{name}: axis {ax} has no dimension scale")
        if hook not in f:
            continue
        acts = f[hook][()].astype(np.float64)
        layered = acts.ndim == 3
        if not layered:
            acts = acts[None]
        row_label = None
        if labels is not None:
            row_label = np.repeat(labels, lengths) if raw else labels
        for li in range(acts.shape[0]):
            X = acts[li]
            sel = (lambda name: g[name][li]) if layered else (lambda name: g[name][()])
            if int(sel("count")) != X.shape[0]:
                fail(f"{hook}[{li}] count {int(sel('count'))} != {X.shape[0]}")
            e = rel(sel("mean"), X.mean(axis=0))
            if e > 1e-9:
                fail(f"{hook}[{li}] mean: {e:.3g} from numpy")
            if "cov" in g:
                C = np.cov(X, rowvar=False, ddof=1)
                e = rel(sel("cov"), C)
                if e > 1e-9:
                    fail(f"{hook}[{li}] cov: {e:.3g} from numpy")
            if "pca_components" in g:
                C = np.cov(X, rowvar=False, ddof=1)
                w, V = np.linalg.eigh(C)
                w, V = w[::-1], V[:, ::-1]
                comps, ev = sel("pca_components"), sel("pca_explained_variance")
                K = comps.shape[0]
                e = rel(ev, w[:K])
                if e > 1e-8:
                    fail(f"{hook}[{li}] pca eigenvalues: {e:.3g} from numpy")
                if np.abs(np.linalg.norm(comps, axis=1) - 1).max() > 1e-12:
                    fail(f"{hook}[{li}] pca components are not unit vectors")
                for k in range(K):
                    gap = min(abs(w[k] - w[k + 1]) if k + 1 < len(w) else np.inf,
                              abs(w[k] - w[k - 1]) if k > 0 else np.inf)
                    if gap < 1e-6 * w[0]:
                        continue  # a nearly repeated eigenvalue: its vector is not unique
                    c = abs(float(comps[k] @ V[:, k]))
                    if abs(1 - c) > 1e-8:
                        fail(f"{hook}[{li}] pca component {k}: |cos| {c:.12f} with numpy's")
                    big = int(np.argmax(np.abs(comps[k])))
                    if comps[k][big] <= 0:
                        fail(f"{hook}[{li}] pca component {k}: largest entry not positive")
            if "class_means" in g and row_label is not None:
                cls = g["class_labels"][()]
                cm = sel("class_means")
                for ci, c in enumerate(cls):
                    e = rel(cm[ci], X[row_label == c].mean(axis=0))
                    if e > 1e-9:
                        fail(f"{hook}[{li}] class {c} mean: {e:.3g} from numpy")
                if "diff_of_means" in g:
                    d = X[row_label == 1].mean(axis=0) - X[row_label == 0].mean(axis=0)
                    e = rel(sel("diff_of_means"), d)
                    if e > 1e-9:
                        fail(f"{hook}[{li}] diff_of_means: {e:.3g} from numpy")
            checked += 1
    if checked == 0:
        fail(f"{path}: no reduction had stored rows to compare with")
    print(f"check_reduce: {path}: {checked} hook-layers agree with numpy")
    return f


def check_project(base, proj_path):
    p = h5py.File(proj_path, "r")
    D = p["project/directions"][()]
    n = 0
    for hook in p:
        if hook not in base or not isinstance(p[hook], h5py.Dataset) or hook.startswith("samples"):
            continue
        if hook in ("layer", "hidden", "direction", "token", "sample", "sample_edge", "rank",
                    "layer_computed", "hidden_col"):
            continue
        X = base[hook][()].astype(np.float64)
        Y = p[hook][()].astype(np.float64)
        if X.ndim == 2:
            X, Y = X[None], Y[None]
        for li in range(X.shape[0]):
            Dl = D[li] if D.ndim == 3 else D
            ref = X[li] @ Dl.T
            e = rel(Y[li], ref)
            if e > 1e-6:
                fail(f"--project {hook}[{li}]: {e:.3g} from numpy")
            n += 1
    if n == 0:
        fail(f"{proj_path}: no projected hook to compare")
    print(f"check_reduce: {proj_path}: {n} projected hook-layers agree with numpy")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        sys.exit(2)
    base = check_file(args[0])
    if len(args) == 3 and args[1] == "--project":
        check_project(base, args[2])
