"""`probe umap --run RUN[,RUN] [--tokens cls,patch] [--layers first,middle,last|all|0,-1] [--color expression]
[--method umap|pca]`: 2-D embeddings of a readout per layer → ``<run>/probes/umap.csv``,
``umap_scores.json`` (trustworthiness, silhouette) and ``umap.png``."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run name(s), comma-separated")
    parser.add_argument("--tokens", default="cls,patch", help="readouts (default: cls,patch)")
    parser.add_argument("--layers", default="first,middle,last",
                        help="'first,middle,last' (default), 'all', indices (0 = tokens, -1 = last) or hook names")
    parser.add_argument("--color", default="expression", help="target used for colours and the silhouette")
    parser.add_argument("--method", default="umap", help="umap, pca or umap,pca (default: umap)")
    parser.add_argument("--data", default=None, help="dataset spec (default: the run's data.spec)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--max-samples", type=int, default=2000, help="first N samples (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="UMAP random state (default: 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="extraction batch size")


def layer_spec(text: str, n_layers: int) -> str:
    """Expand ``first``/``middle``/``last`` into indices; other specs pass through."""
    words = {"first": "0", "middle": str(n_layers // 2), "last": str(n_layers - 1)}
    parts = [words.get(p.strip(), p.strip()) for p in text.split(",")]
    return ",".join(parts)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from probe.embed import embed, scores
    from probe.features import ensure_features, split_readouts
    from probe.plotting import save_chart
    from train.io import atomic_write_csv, atomic_write_json
    from train.runs import resolve_run

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    results = []
    for d in [resolve_run(r) for r in args.run.split(",") if r]:   # every run is checked first
        fs = ensure_features(d, args.data, args.split, batch_size=args.batch_size)
        n = min(fs.n, args.max_samples)
        colour, _ = fs.target(args.color)
        extra = [t for t in fs.target_names() if t != "expression"]
        expression = [fs.label_names[i] for i in np.asarray(fs.labels[:n])]
        rows, score_rows = [], []
        for readout, layer, _ in fs.pairs(split_readouts(args.tokens), layer_spec(args.layers, len(fs.layers))):
            X = np.asarray(fs.readout(readout, layer)[:n])
            for method in methods:
                Y = embed(X, method=method, seed=args.seed)
                score_rows.append({"layer": layer, "tokens": readout, "method": method,
                                   **scores(X, Y, colour[:n]), "color": args.color})
                for i in range(n):
                    rows.append({"sample_id": fs.sample_ids[i], "layer": layer, "tokens": readout, "method": method,
                                 "x": float(Y[i, 0]), "y": float(Y[i, 1]), "expression": expression[i],
                                 **{a: fs.attrs[a][i] for a in extra}})
        cols = ["sample_id", "layer", "tokens", "method", "x", "y", "expression"] + extra
        results.append((d, n, rows, score_rows, cols))
    for d, n, rows, score_rows, cols in results:  # write only once every run is embedded
        out = d / "probes"
        atomic_write_csv(out / "umap.csv", rows, cols)
        atomic_write_json(out / "umap_scores.json", score_rows)
        save_chart(scatter(rows, args.color if args.color in cols else "expression"), out / "umap", formats=("png",))
        print(f"{d.name}: {len(score_rows)} embeddings of {n} samples → {out / 'umap.csv'}")
        for r in score_rows:
            sil = "n/a" if r["silhouette"] is None else f"{r['silhouette']:+.3f}"
            print(f"  {r['layer']:<10} {r['tokens']:<10} {r['method']:<5} trustworthiness "
                  f"{r['trustworthiness']:.3f}  silhouette({args.color}) {sil}")
    return 0


def scatter(rows: list[dict], colour: str):
    """Altair scatter facets: rows = readout × method, columns = layers."""
    import altair as alt
    import pandas as pd

    df = pd.DataFrame(rows)
    df[colour] = df[colour].astype(str)
    df["panel"] = df["tokens"] + " · " + df["method"]
    return alt.Chart(df).mark_circle(size=12, opacity=0.7).encode(
        x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None), color=alt.Color(f"{colour}:N"),
    ).properties(width=150, height=150).facet(row="panel:N", column=alt.Column("layer:N", sort=list(dict.fromkeys(df["layer"])))
    ).resolve_scale(x="independent", y="independent")
