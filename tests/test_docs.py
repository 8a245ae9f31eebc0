"""The README and docs stay true to the code: every medsr command in their code blocks parses with
medsr's own parser (options that exist, values of the right kind), and every relative link resolves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from medsr.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


LAUNCHERS = {"nohup", "srun", "time", "exec", "sudo"}


def _shell_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S)


def medsr_commands(text: str) -> list[list[str]]:
    """The argument lists of every medsr command in the page's shell blocks (comments stripped,
    ``&&`` and ``;`` split; ``.venv/bin/medsr`` and ``torchrun ... -m medsr.cli`` included)."""
    found = []
    for block in _shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            for part in re.split(r"&&|;", line):
                words = shlex.split(part)
                for i, word in enumerate(words):
                    launched = i == 0 or words[i - 1] in LAUNCHERS or "=" in words[i - 1]
                    if (word == "medsr" or word.endswith("/medsr")) and launched:
                        found.append(words[i + 1:])
                        break
                    if word == "-m" and words[i + 1:i + 2] == ["medsr.cli"]:
                        found.append(words[i + 2:])
                        break
    return found


def _pages_with_commands() -> list[tuple[str, list[str]]]:
    return [(f"{page.relative_to(ROOT)}: medsr {shlex.join(args)}", args)
            for page in PAGES for args in medsr_commands(page.read_text())]


COMMANDS = _pages_with_commands()


def test_the_pages_show_commands():
    # the README alone shows one command per task
    readme = [name for name, _ in COMMANDS if name.startswith("README.md")]
    assert len(readme) >= 15
    assert {args[0] for _, args in COMMANDS} >= {"upscale", "info", "evaluate", "finetune", "export", "view", "study"}


@pytest.mark.parametrize("args", [args for _, args in COMMANDS], ids=[name for name, _ in COMMANDS])
def test_every_documented_command_parses(args):
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"medsr {shlex.join(args)} does not parse (exit {exc.code})")


def test_a_wrong_command_is_caught():
    """The check above can fail: a misspelt option does not parse."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["upscale", "a.png", "-o", "b.png", "--outscael", "2"])


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
