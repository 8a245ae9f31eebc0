"""The command line: `medsr view` and `medsr study`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _serving_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1, this machine only)")
    parser.add_argument("--no-token", action="store_true",
                        help="on the loopback, serve without the token of the printed URL (then any user of this "
                             "machine can read what is opened)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port}: 1 to 65535")


def run_view(args: argparse.Namespace) -> int:
    from medsr.web import app as web
    from medsr.web import view

    _check_port(args.port)
    collection = view.open_collection(args.paths)
    print(f"{len(collection.items)} image(s) in {len(collection.layers)} layer(s): "
          + ", ".join(layer.name for layer in collection.layers))
    token = web.token_for(args.host, no_token=args.no_token)
    web.serve(web.viewer_app(collection, token=token, device=args.device, host=args.host), host=args.host,
              port=args.port, token=token, open_browser=not args.no_browser, announce=print)
    return 0


def run_study(args: argparse.Namespace) -> int:
    from medsr.web import app as web
    from medsr.web import study

    if args.action == "build":
        methods: dict[str, str | Path] = {}
        reference = args.reference
        if args.report:
            reported, found_reference = study.report_methods(args.report)
            methods.update(reported)
            reference = reference or found_reference
        for entry in args.method:
            name, eq, folder = entry.partition("=")
            if not eq or not name or not folder:
                raise ValueError(f"--method {entry!r}: give NAME=FOLDER")
            if name in methods:
                raise ValueError(f"--method {name}: given twice")
            methods[name] = folder
        count = study.build(methods, args.output, reference=reference, regions=args.regions, size=args.size,
                            seed=args.seed, question=args.question, allow_changes=args.allow_changes)
        print(f"wrote {args.output}: {count} questions (seed {args.seed})")
        return 0
    if args.action == "serve":
        _check_port(args.port)
        token = web.token_for(args.host, no_token=args.no_token)
        web.serve(web.study_app(args.study, token=token, host=args.host), host=args.host, port=args.port, token=token,
                  open_browser=not args.no_browser, announce=print)
        return 0
    written = [args.output / name for name in ("results.json", "results.html")] if args.output else []
    if any(path.exists() for path in written) and not args.overwrite:  # before any work, nothing replaced
        raise ValueError(f"{args.output}: already holds results (use --overwrite to replace them)")
    found = study.results(args.study)
    print(f"{found['answers']} answers to {found['questions']} questions by {len(found['readers'])} reader(s)")
    for method, v in found["pooled"].items():
        low, high = v["ci95_readers_images"]
        drawn = "n/a with one image" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"
        print(f"  {method}: preferred {v['preferred']} of {v['shown']}, {v['share']:.2f}, 95% interval "
              f"{drawn} with readers and images drawn again "
              f"(Wilson, answers as independent: [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}])")
    for a in found["agreement"]:
        print(f"  {' & '.join(a['readers'])}: {a['questions']} common questions, same choice {a['agreement']:.2f}, "
              f"kappa {a['kappa']:.2f}")
    if args.output:
        print(f"wrote {study.write_results(found, args.output)}")
    return 0



def add_commands(sub: argparse._SubParsersAction) -> None:
    vw = sub.add_parser("view", help="look at images and their upscaled versions in the browser (local web app)")
    vw.add_argument("paths", nargs="+", help="folders or files, one layer each: inputs, outputs, references; "
                                             "folders' files are matched by name; an evaluate report folder")
    _serving_options(vw)
    vw.add_argument("--device", default="cpu", help="where the fidelity dial runs the model (default: cpu)")
    vw.set_defaults(run=run_view)

    st = sub.add_parser("study", help="a blinded reader study: build it, serve it, read its results")
    ssub = st.add_subparsers(dest="action", required=True, help="build, serve or results")
    sb = ssub.add_parser("build", help="questions from folders of outputs, randomised with a recorded seed")
    sb.add_argument("--method", action="append", default=[], metavar="NAME=FOLDER",
                    help="a method and the folder of its outputs (two or more)")
    sb.add_argument("--report", type=Path, default=None,
                    help="an evaluate report written with --save-outputs: its models as the methods, its ground "
                         "truth as the reference")
    sb.add_argument("--reference", default=None, help="folder of reference images shown beside each question")
    sb.add_argument("--regions", type=int, default=2, help="regions per image (default 2)")
    sb.add_argument("--size", type=int, default=128, help="region side in pixels (default 128)")
    sb.add_argument("--seed", type=int, default=0, help="seed of the randomisation (recorded in the study)")
    sb.add_argument("--question", choices=("reference", "structure"), default="reference",
                    help="closer to the reference, or fine structure more faithfully")
    sb.add_argument("--allow-changes", action="store_true", help="readers may change an answer already given")
    sb.add_argument("-o", "--output", type=Path, required=True, help="the study file to create (SQLite)")
    ss = ssub.add_parser("serve", help="serve a study to readers in the browser")
    ss.add_argument("study", type=Path)
    _serving_options(ss)
    sr = ssub.add_parser("results", help="preferences with 95%% intervals, per reader and pooled, and agreement")
    sr.add_argument("study", type=Path)
    sr.add_argument("-o", "--output", type=Path, default=None, help="folder for results.json and results.html")
    sr.add_argument("--overwrite", action="store_true", help="replace results already in --output")
    st.set_defaults(run=run_study)
