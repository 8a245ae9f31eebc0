"""Start-up (issue 36): the command line's help and parser import no PyTorch, and what the parser
writes out for the library's defaults is the library's."""

from __future__ import annotations

import subprocess
import sys


def test_help_imports_no_pytorch():
    script = ("import sys\nfrom medsr.cli import build_parser\nbuild_parser()\nimport medsr\n"
              "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('medsr'))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "medsr.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "upscale" in done.stdout


def test_the_parsers_defaults_are_the_librarys(capsys):
    import pytest

    from medsr.cli import build_parser
    from medsr.engine.upscale import DEFAULT_MODEL
    from medsr.training.config import PRESETS

    args = build_parser().parse_args(["upscale", "a.png", "-o", "b.png"])
    assert args.model == DEFAULT_MODEL
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--help"])
    listed = " ".join(capsys.readouterr().out.split())
    assert all(name in listed for name in PRESETS)  # the presets the help lists are the config's own
