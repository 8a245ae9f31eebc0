"""What `medsr upscale --help` says matches what medsr does (issue 37)."""

from __future__ import annotations

import pytest

from medsr.cli import build_parser


def _help(capsys, *command) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_upscale_help_names_volumes_and_the_auto_rule(capsys):
    text = _help(capsys, "upscale")
    assert "NIfTI" in text and "lanczos-projected" in text
    assert "cxr for gray images, retina for colour" not in text  # what auto did before it was chosen by measurement
