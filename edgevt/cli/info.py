"""`edgevt models`, `edgevt targets`, `edgevt devices`: what exists, and whether it runs here."""

from __future__ import annotations

import argparse

from edgevt.cli.common import add_json, print_json


def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="list the model zoo")
    add_json(p)
    p.set_defaults(func=models)

    p = sub.add_parser("targets", help="list export targets and whether their runtime is here")
    add_json(p)
    p.add_argument("--markdown", action="store_true", help="the README's targets table")
    p.set_defaults(func=targets)

    p = sub.add_parser("devices", help="list device profiles (targets/*.toml) or show one")
    p.add_argument("device", nargs="?", help="a profile name or a .toml path to show")
    add_json(p)
    p.set_defaults(func=devices)


def models(args: argparse.Namespace) -> None:
    from edgevt.models import get_entry, list_models

    rows = []
    for name in list_models():
        e = get_entry(name)
        pp = e.preprocess
        rows.append(
            {
                "name": name,
                "family": e.family,
                "source": e.source,
                "input": pp.input_size,
                "resize": pp.resize,
                "interpolation": pp.interpolation,
                "mean": pp.mean,
                "std": pp.std,
                "pretrained_here": e.pretrained_path is not None,
                "checkpoints": list(e.checkpoint_formats),
            }
        )
    if args.json:
        print_json(rows)
        return
    print(f"{'model':<20}{'family':<8}{'input':<13}{'mean/std':<12}{'source'}")
    for r in rows:
        norm = "0.5/0.5" if r["mean"][0] == 0.5 else "imagenet"
        size = f"{r['resize']}->{r['input']}"
        print(
            f"{r['name']:<20}{r['family']:<8}{size:<13}{norm:<12}{r['source']}"
            + ("  (--pretrained available)" if r["pretrained_here"] else "")
        )


def targets(args: argparse.Namespace) -> None:
    import dataclasses

    from edgevt.targets import all_targets, markdown_table

    if args.markdown:
        print(markdown_table())
        return
    rows = []
    for t in all_targets().values():
        s = t.spec
        rows.append({
            "name": s.name, "suffixes": list(s.suffixes), "precisions": list(s.precisions),
            "extra": s.extra, "needs_gpu": s.needs_gpu, "needs_macos": s.needs_macos,
            "options": [f.name for f in dataclasses.fields(t.Options)],
            "max_drop": t.supports_max_drop,
            "available": t.available() or "yes", "description": s.description,
        })  # fmt: skip
    if args.json:
        print_json(rows)
        return
    for r in rows:
        install = f"pip install edgevt[{r['extra']}]" if r["extra"] else "core"
        here = "" if r["available"] == "yes" else f"  [not here: {r['available']}]"
        print(
            f"{r['name']:<10}{'/'.join(r['suffixes']):<12}{','.join(r['precisions']):<19}"
            f"{install:<30}{r['description']}{here}"
        )


def devices(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from edgevt.devices import list_profiles, load_profile, profiles_dir

    names = [args.device] if args.device else list_profiles()
    profiles = [load_profile(n) for n in names]
    if args.device:
        for key, value in asdict(profiles[0]).items():
            print(f"{key:<16}{', '.join(map(str, value)) if isinstance(value, tuple) else value}")
    else:
        print(f"device profiles in {profiles_dir()}:")
        rows = [(p.name, "/".join(p.targets), "/".join(p.precisions), p.description)
                for p in profiles]  # fmt: skip
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]  # columns that never merge
        for name, targets, precisions, description in rows:
            print(f"  {name:<{widths[0]}}{targets:<{widths[1]}}{precisions:<{widths[2]}}"
                  f"{description}")  # fmt: skip
    if args.json:
        print_json(
            [{k: str(v) if k == "path" else v for k, v in asdict(p).items()} for p in profiles]
        )
