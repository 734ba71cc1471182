"""The Snakemake commands the README, docs/ and the presets show parse as meant: options such as
--configfile, --resources and --default-resources take every word after them, so a target written
after one of them would be read as a config file or a resource."""

import re
import shlex

import pytest
from workflow_helpers import REPO

SOURCES = [
    "README.md",
    "workflow/presets/gemma2-9b-qlora.yaml",
    "workflow/presets/gemma2-9b-t4.yaml",
    "workflow/presets/llama3-8b-8bit.yaml",
    "workflow/profiles/slurm/config.yaml",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")),
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "workflow" / "examples").glob("*.yaml")),
]


def shown_commands():
    """Every snakemake command line the docs show: in code blocks, comments (continued with a
    backslash) and inline code."""
    commands = []
    for source in SOURCES:
        text = (REPO / source).read_text()
        lines = [re.sub(r"^\s*#\s?", "", line) for line in text.splitlines()]
        joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
        for line in joined.splitlines() + re.findall(r"`([^`]*snakemake [^`]*)`", text):
            match = re.match(r"(?:\.venv/bin/|\$\(SNAKEMAKE\) )?snakemake\s+(.*)$", line.strip())
            # --report's value is an output file, not a target
            if match and "results/" in match.group(1) and "--report" not in match.group(1):
                commands.append((source, match.group(1).split("`")[0].strip()))
    return commands


@pytest.mark.parametrize("source,command", shown_commands())
def test_every_shown_command_makes_its_target(source, command):
    from snakemake.cli import get_argument_parser

    words = [w for w in shlex.split(command) if not w.startswith("#")]
    wanted = [w for w in words if w.startswith("results/")]
    args = get_argument_parser().parse_args(words)
    assert wanted and set(wanted) <= set(args.targets), f"{source}: {command}: targets {args.targets}"


def test_the_docs_show_commands():
    assert len(shown_commands()) >= 8


def test_the_make_targets_the_docs_show_exist():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))
    for page in sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]:
        shown = set(re.findall(r"(?:^|`)make ([a-z][a-z-]*)", page.read_text(), re.M))
        assert shown <= targets, f"{page.name}: {sorted(shown - targets)}"


def test_no_shown_command_replaces_a_profiles_default_resources():
    """--default-resources on the command line replaces a profile's default-resources whole (the
    small jobs lose memory, runtime and CPUs): site settings go into a copy of the profile."""
    for source, command in shown_commands():
        assert not ("--workflow-profile" in command and "--default-resources" in command), (source, command)
