"""The command line: one module per command group (``upscale``, ``training``, ``evaluation``,
``models``, ``web``), each parsing arguments and printing what the library returns; ``main`` turns
errors about input into messages and exit statuses. The top of the house: nothing imports it.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading

from medsr.cli import evaluation, models, node, training, upscale, web
from medsr.cli.common import error as _error


def build_parser() -> argparse.ArgumentParser:
    from medsr.core.version import __version__

    parser = argparse.ArgumentParser(prog="medsr", description="Super-resolution for medical images.")
    parser.add_argument("--version", action="version", version=f"medsr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    for group in (upscale, training, evaluation, models, web, node):
        group.add_commands(sub)
    return parser


class _CliHandler(logging.StreamHandler):
    medsr_cli = True  # found again by this mark, which holds across reloads of this module


def _show_library_logs() -> None:
    """The library logs through ``logging``; the command line shows its INFO lines on stdout."""
    logger = logging.getLogger("medsr")
    for handler in [h for h in logger.handlers if getattr(h, "medsr_cli", False)]:
        logger.removeHandler(handler)
    handler = _CliHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: temporary files are removed on the way out


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 all done, 1 some inputs failed, 2 a usage or set-up error, 130 interrupted."""
    args = build_parser().parse_args(argv)
    args.command_line = "medsr " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    _show_library_logs()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return args.run(args)
    except ValueError as exc:  # invalid option values found after parsing
        _error(str(exc))
        return 2
    except OSError as exc:  # the disk or the file system, outside any one input
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # a command that never imported PyTorch joined no group
            from medsr.engine.devices import leave_process_group

            leave_process_group()

