"""`probe norms --run RUN [--data SPEC] [--split test] [--n 512]`: token norm statistics (CLS vs patches,
high-norm outlier fraction) per layer → ``<run>/probes/norms.csv``, and the CLS→patch attention
entropy per layer/head → ``<run>/probes/attn_entropy.csv``."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run name(s), comma-separated")
    parser.add_argument("--data", default=None, help="dataset spec (default: the run's data.spec)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--n", type=int, default=512, help="images to use (default: 512)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward (default: 64)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def run(args: argparse.Namespace) -> int:
    from probe.norms import measure
    from train.data import load_dataset
    from train.engine import make_eval_transform
    from train.io import atomic_write_csv
    from train.runs import load_run

    from train.runs import resolve_run

    names = [r for r in args.run.split(",") if r]
    for name in names:   # every run is checked before anything is written
        resolve_run(name)
    measured = []
    for name in names:
        model, config = load_run(name, map_location=args.device)
        spec = args.data or config["data"]["spec"]
        ds = load_dataset(spec, args.split, transform=make_eval_transform(config))
        measured.append((name, config, ds, measure(model, ds, batch_size=args.batch_size, max_samples=args.n,
                                                   device=args.device)))
    for name, config, ds, acc in measured:
        out = Path(config["run_dir"]) / "probes"
        norms, ent = acc.norm_rows(), acc.entropy_rows()
        atomic_write_csv(out / "norms.csv", norms, ["layer", "tokens", "mean_norm", "std_norm", "max_norm", "outlier_frac"])
        atomic_write_csv(out / "attn_entropy.csv", ent, ["layer", "head", "entropy", "entropy_norm"])
        print(f"{name}: norms of {min(args.n, len(ds))} images → {out / 'norms.csv'}, {out / 'attn_entropy.csv'}")
        w = max([10] + [len(r["layer"]) for r in norms])
        print(f"  {'layer':<{w}} {'cls mean':>9} {'patch mean':>11} {'patch outliers':>15} {'cls entropy':>12}")
        by = {(r["layer"], r["tokens"]): r for r in norms}
        for layer in dict.fromkeys(r["layer"] for r in norms):
            c, p = by.get((layer, "cls")), by.get((layer, "patch"))
            e = [r["entropy_norm"] for r in ent if r["layer"] == layer]
            pm = f"{p['mean_norm']:.2f}" if p else "-"
            po = f"{p['outlier_frac']:.4f}" if p else "-"
            em = f"{sum(e) / len(e):.3f}" if e else "-"
            cm = f"{c['mean_norm']:.2f}" if c else "-"
            print(f"  {layer:<{w}} {cm:>9} {pm:>11} {po:>15} {em:>12}")
    return 0
