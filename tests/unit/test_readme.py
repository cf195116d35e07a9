"""The README shows what the product does: its configuration table and command lines are checked."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bridge.cli import build_parser
from bridge.config import reference_markdown
from bridge.sanitize.policy import load_policy

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_configuration_reference_is_current() -> None:
    block = README.split("<!-- config-reference:start -->\n", 1)[1].split("<!-- config-reference:end -->", 1)[0]
    assert block == reference_markdown(), "regenerate with: python -m bridge.config"


def command_lines() -> list[str]:
    """Every `d4-bridge ...` command in the README's shell blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in re.split(r"\|", line):
                part = part.strip()
                if part.startswith("d4-bridge "):
                    lines.append(part)
    return lines


@pytest.mark.parametrize("line", command_lines())
def test_readme_command_lines_parse(line: str) -> None:
    args = shlex.split(line)[1:]
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:  # argparse refuses: the README shows something the CLI does not take
        pytest.fail(f"README shows a command the CLI refuses: {line} ({exc})")


def test_readme_shows_commands() -> None:
    assert len(command_lines()) >= 6  # the extraction finds the site, hub and demo examples


def policy_examples() -> list[str]:
    """The README's TOML blocks that are sanitization policy files."""
    return [b for b in re.findall(r"```toml\n(.*?)```", README, flags=re.S) if "[addresses]" in b]


@pytest.mark.parametrize("text", policy_examples())
def test_readme_policy_examples_load(text: str, tmp_path: Path) -> None:
    for name in re.findall(r'key_file = "([^"]+)"', text):
        (tmp_path / name).write_bytes(bytes(range(32)))
    path = tmp_path / "policy.toml"
    path.write_text(text)
    assert load_policy(path).name


def test_readme_shows_a_policy_example() -> None:
    assert policy_examples()
