"""The command line: `medsr weights`."""

from __future__ import annotations

import argparse

from medsr.cli.common import error as _error


def run_weights(args: argparse.Namespace) -> int:
    from medsr.models import ncnn, weights
    from medsr.nets.rrdbnet import RRDBNet

    if args.action == "manifest":
        import json

        print(json.dumps(weights.manifest(), indent=2))
        return 0
    if args.action == "list":
        for spec in weights.KNOWN_MODELS.values():
            cached = weights.cached_path(spec)
            offline_copy = ncnn.ncnn_files(spec)
            where = f"cached at {cached}" if cached.is_file() else "not cached"
            if spec.packaged:
                where = f"shipped at {weights.PACKAGED_DIR / spec.packaged}"
            offline = "; offline copy available" if offline_copy else ""
            print(f"{spec.name:22s} {spec.description} [{where}{offline}]")
        return 0
    try:
        if args.action == "fetch":
            if args.model not in weights.KNOWN_MODELS:
                raise weights.WeightsError(f"{args.model}: not a known model ({', '.join(weights.KNOWN_MODELS)})")
            print(weights.fetch(weights.KNOWN_MODELS[args.model], source=args.source))
            return 0
        model = weights.load_model(args.model)
    except weights.WeightsError as exc:
        _error(str(exc))
        return 1
    net = model.module
    for path, digest in model.sources:
        print(f"file:       {path}\nsize:       {path.stat().st_size:,} bytes\nSHA-256:    {digest}")
    shape = f", {len(net.body)} blocks, {net.conv_first.out_channels} features" if isinstance(net, RRDBNet) else ""
    print(f"network:    {model.architecture} x{model.scale}{shape}; {model.in_channels} channels; "
          f"runs in {', '.join(model.precisions)}")
    print(f"parameters: {sum(p.numel() for p in net.parameters()):,} in {len(net.state_dict())} tensors")
    return 0



def add_commands(sub: argparse._SubParsersAction) -> None:
    wt = sub.add_parser("weights", help="list, fetch or inspect model weights")
    wsub = wt.add_subparsers(dest="action", required=True, help="list, manifest, fetch or info")
    wsub.add_parser("list", help="known models and where they are")
    wsub.add_parser("manifest", help="every known model's file, SHA-256 and size, as JSON")
    fetch = wsub.add_parser("fetch", help="download or convert a known model into the cache")
    fetch.add_argument("model", help="a known model name")
    fetch.add_argument("--from", dest="source", default=None, metavar="FOLDER|URL",
                       help="take the release file from this folder or URL instead of the official address "
                            "(default: MEDSR_WEIGHTS_MIRROR, then the official one); checked by SHA-256")
    winfo = wsub.add_parser("info", help="describe a known model or checkpoint file")
    winfo.add_argument("model", help="a known model name or a checkpoint path")
    wt.set_defaults(run=run_weights)
