"""The command line: `medsr dicom-node`."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsr.cli.common import add_threads_option


def run_node(args: argparse.Namespace) -> int:
    from medsr.engine.devices import fit_threads
    from medsr.engine.node import NodeConfig, serve

    fit_threads(args.threads)
    config = NodeConfig(storage=args.storage, output=args.output, ae_title=args.ae_title, port=args.port,
                        bind=args.bind, allow=tuple(args.allow), stable_after=args.stable_after,
                        outscale=args.outscale, model=args.model, device=args.device, precision=args.precision,
                        send_to=args.send_to)
    print(f"DICOM node {config.ae_title} on {config.bind}:{config.port} (Ctrl+C stops); derived series into "
          f"{config.output}", flush=True)
    try:
        serve(config)
    except KeyboardInterrupt:
        print("stopped; series not yet processed wait in", config.storage / "incoming")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    node = sub.add_parser("dicom-node", help="a DICOM Storage SCP that upscales each series it receives")
    node.add_argument("--storage", type=Path, required=True, help="folder for received instances and the queue")
    node.add_argument("--output", type=Path, required=True, help="folder for the derived series (one per series)")
    node.add_argument("--send-to", default=None, metavar="AET@HOST:PORT",
                      help="also send each derived series there by C-STORE (a PACS, Orthanc)")
    node.add_argument("--ae-title", default="MEDSR", help="this node's AE title (default MEDSR)")
    node.add_argument("--port", type=int, default=11112, help="port (default 11112)")
    node.add_argument("--bind", default="127.0.0.1", help="interface (default 127.0.0.1, this machine only)")
    node.add_argument("--allow", action="append", default=[], metavar="AET",
                      help="a calling AE title that may send (repeatable; default: any)")
    node.add_argument("--stable-after", type=float, default=10.0, metavar="SECONDS",
                      help="a series is processed once it received nothing for this long (default 10)")
    node.add_argument("--outscale", type=float, default=2.0, help="scale of the derived series (default 2)")
    node.add_argument("--model", default="auto", help="auto (by Modality, as upscale), a known name or a checkpoint")
    node.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    node.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                      help="network precision (default: auto, as for upscale)")
    add_threads_option(node)
    node.set_defaults(run=run_node)
