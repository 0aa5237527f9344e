"""`probe cka --run RUN[,RUN2] [--kernel linear|rbf] [--readouts cls,patch] [--data SPEC] [--split test]`:
layer × layer CKA of the CLS and patch readouts, CLS vs patch, and run vs run (first run vs each other),
written to ``<run>/probes/cka.json`` + ``cka.csv`` + ``cka.png`` (heatmaps)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run name(s), comma-separated")
    parser.add_argument("--kernel", default="linear", choices=["linear", "rbf"], help="CKA kernel (default: linear)")
    parser.add_argument("--unbiased", action="store_true", help="unbiased HSIC estimator")
    parser.add_argument("--data", default=None, help="dataset spec (default: each run's data.spec)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--max-samples", type=int, default=2000, help="first N samples (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=64, help="extraction batch size")


def matrices(sets: dict, kernel: str, unbiased: bool, n: int) -> dict[str, list[dict]]:
    """CKA matrices per contracts, by run: cls_vs_cls, patch_vs_patch, cls_vs_patch; cross-run
    ``<A>_vs_<B>_cls`` / ``_patch`` (first run vs each other, stored in both). ``sets``: run → FeatureSet."""
    from probe.similarity import cka_matrix

    def stack(fs, readout):
        layers = fs.layers_for(readout)
        return layers, [fs.readout(readout, layer)[:n] for layer in layers]

    names = list(sets)
    out: dict[str, list[dict]] = {name: [] for name in names}
    for name in names:
        fs = sets[name]
        cl, cx = stack(fs, "cls")
        pl, px = stack(fs, "patch") if "patch" in fs.arrays else ([], [])
        out[name].append(_matrix("cls_vs_cls", cl, cl, cka_matrix(cx, None, kernel, unbiased)))
        if px:
            out[name].append(_matrix("patch_vs_patch", pl, pl, cka_matrix(px, None, kernel, unbiased)))
            out[name].append(_matrix("cls_vs_patch", cl, pl, cka_matrix(cx, px, kernel, unbiased)))
    for other in names[1:]:
        a, b = sets[names[0]], sets[other]
        for readout in ("cls", "patch"):
            if readout in a.arrays and readout in b.arrays:
                al, ax = stack(a, readout)
                bl, bx = stack(b, readout)
                m = _matrix(f"{names[0]}_vs_{other}_{readout}", al, bl, cka_matrix(ax, bx, kernel, unbiased))
                out[names[0]].append(m)
                out[other].append(m)
    return out


def _matrix(name, x_labels, y_labels, values) -> dict:
    # values[i][j]: row = y label i, column = x label j (contracts: shape len(y_labels) × len(x_labels))
    return {"name": name, "x_labels": list(x_labels), "y_labels": list(y_labels), "values": values.T.tolist()}


def heatmap(mats: list[dict]):
    """Altair heatmaps, one panel per matrix."""
    import altair as alt
    import pandas as pd

    charts = []
    for m in mats:
        df = pd.DataFrame([{"x": x, "y": y, "value": m["values"][i][j]} for i, y in enumerate(m["y_labels"])
                           for j, x in enumerate(m["x_labels"])])
        charts.append(alt.Chart(df, title=m["name"]).mark_rect().encode(
            x=alt.X("x:N", sort=m["x_labels"], title=None), y=alt.Y("y:N", sort=m["y_labels"], title=None),
            color=alt.Color("value:Q", scale=alt.Scale(domain=[0, 1], scheme="viridis"), title="CKA"),
            tooltip=["x", "y", alt.Tooltip("value:Q", format=".3f")]).properties(width=160, height=160))
    return alt.hconcat(*charts)


def run(args: argparse.Namespace) -> int:
    from probe.features import ensure_features
    from probe.plotting import save_chart
    from train.io import atomic_write_csv, atomic_write_json
    from train.runs import resolve_run

    dirs = [resolve_run(r) for r in args.run.split(",") if r]
    sets = {d.name: ensure_features(d, args.data, args.split, batch_size=args.batch_size) for d in dirs}
    n = min(min(fs.n for fs in sets.values()), args.max_samples)
    mats = matrices(sets, args.kernel, args.unbiased, n)
    for d in dirs:
        own = mats[d.name]
        atomic_write_json(d / "probes" / "cka.json", {"kernel": args.kernel, "unbiased": args.unbiased, "n": n,
                                                      "matrices": own})
        atomic_write_csv(d / "probes" / "cka.csv", [{"name": m["name"], "x": x, "y": y, "value": m["values"][i][j]}
                                                    for m in own for i, y in enumerate(m["y_labels"])
                                                    for j, x in enumerate(m["x_labels"])], ["name", "x", "y", "value"])
        save_chart(heatmap(own), d / "probes" / "cka", formats=("png",))
        print(f"{d.name}: {len(own)} CKA matrices ({args.kernel}, n={n}) → {d / 'probes' / 'cka.json'}")
        for m in own:
            diag = [m["values"][i][i] for i in range(min(len(m["x_labels"]), len(m["y_labels"])))]
            print(f"  {m['name']:<28} diagonal " + " ".join(f"{v:.2f}" for v in diag))
    return 0
