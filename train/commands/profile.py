"""`train profile`: params, MACs/FLOPs, throughput, latency and peak memory of models."""
from __future__ import annotations

import argparse
import re

from ..errors import FerlensError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name(s), comma-separated, e.g. ferlens_ir50_vit_s4_d8,ferlens_ir50_cataftermlp_s4_d8")
    parser.add_argument("--run", help="profile a run's model instead; writes profile.json into the run folder")
    parser.add_argument("--img-size", type=int, default=None, help="input side (default: the model's input size)")
    parser.add_argument("--batch-sizes", default="1,8,64", help="comma-separated batch sizes (default 1,8,64)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per batch size; median reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards before timing")
    parser.add_argument("--num-classes", type=int, default=7, help="classifier size when building by name")
    parser.add_argument("--out", help="output .json path (default artifacts/profiles/<model>-<img>.json)")
    parser.add_argument("--no-chart", action="store_true", help="skip the throughput PNG")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FerlensError(f"--batch-sizes '{text}' is not a comma-separated list of integers; use e.g. 1,8,64.") from None
    if not values or min(values) < 1:
        raise FerlensError(f"--batch-sizes '{text}' must list positive integers, e.g. 1,8,64.")
    return values


def run(args: argparse.Namespace) -> int:
    from ..profile import format_table, profile_model, write_profiles
    from ..runs import artifacts_root, load_run

    if bool(args.model) == bool(args.run):
        raise FerlensError("Pass either --model NAME[,NAME] or --run RUN (one of them).")
    sizes = _int_list(args.batch_sizes)
    opts = dict(batch_sizes=sizes, device=args.device, repeats=args.repeats, warmup=args.warmup)
    if args.run:
        model, cfg = load_run(args.run)
        img = args.img_size or int(cfg.get("input", {}).get("img_size") or model.pretrained_cfg["input_size"][1])
        result = profile_model(model, img_size=img, **opts)
        result["model"] = cfg["model"]["name"]
        results, out = [result], args.out or f"{cfg['run_dir']}/profile.json"
    else:
        names = [n.strip() for n in args.model.split(",") if n.strip()]
        results = [profile_model(n, img_size=args.img_size, num_classes=args.num_classes, **opts) for n in names]
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", "+".join(names))
        out = args.out or str(artifacts_root() / "profiles" / f"{slug}-{results[0]['img_size']}.json")
    print(format_table(results))
    for path in write_profiles(results, out, chart=not args.no_chart):
        print(f"wrote {path}")
    return 0
