"""Every command line README.md shows runs a command that exists, with flags it accepts.

The README's samples are pasted from real runs; this keeps its *commands* honest as
the CLI, the scripts and the bench tools change: each `normrt SUB`, `python -m MOD`,
`python scripts/X.py` and `python -m pytest` line (from ```sh blocks and the `$ `
lines of ```text blocks) is looked up with `--help`, and every `--flag` it uses
must appear in that help text.
"""
import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _shell_lines(text):
    """Command lines of ```sh blocks and `$ ` lines of ```text blocks, continuations joined."""
    lines, block = [], None
    for raw in text.splitlines():
        if raw.startswith("```"):
            block = None if block is not None else raw[3:].strip()
            continue
        if block in ("sh", "bash", "shell"):
            lines.append(raw)
        elif block == "text" and raw.startswith("$ "):
            lines.append(raw[2:])
    joined, buf = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        joined.append((buf + line).strip())
        buf = ""
    return [j for j in joined if j]


def _commands(line):
    """Split a shell line into simple commands (token lists), comments dropped."""
    tokens = shlex.split(line, comments=True)
    cmds, cur = [], []
    for tok in tokens:
        if tok in ("&&", "||", ";", "|"):
            cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    cmds.append(cur)
    return [c for c in cmds if c]


def _help_target(cmd):
    """(argv to print help, flags used) for a command we know how to check, else None."""
    if cmd[0] == "normrt":
        cmd = [sys.executable, "-m", "normrt"] + cmd[1:]
    elif cmd[0] in ("python", "python3"):
        cmd = [sys.executable] + cmd[1:]
    else:
        return None                      # pip, cd, ... : not ours to check
    args = cmd[1:]
    if args[:1] == ["-m"]:
        prefix, rest = args[:2], args[2:]
    elif args and args[0].endswith(".py"):
        prefix, rest = args[:1], args[1:]
    else:
        return None
    if prefix == ["-m", "normrt"] and rest and not rest[0].startswith("-"):
        prefix, rest = prefix + rest[:1], rest[1:]     # the subcommand
    flags = sorted({tok.split("=", 1)[0] for tok in rest if tok.startswith("--") and len(tok) > 2})
    return (sys.executable, *prefix), flags


def _checked_commands():
    seen = {}
    for line in _shell_lines(README.read_text(encoding="utf-8")):
        for cmd in _commands(line):
            target = _help_target(cmd)
            if target is None:
                continue
            argv, flags = target
            seen.setdefault(argv, set()).update(flags)
    return sorted((argv, sorted(flags)) for argv, flags in seen.items())


@functools.lru_cache(maxsize=None)
def _help(argv):
    proc = subprocess.run([*argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_readme_shows_commands():
    # the README's first sh block (run the examples, run the tests) is always there
    names = {" ".join(argv[1:]) for argv, _ in _checked_commands()}
    assert "-m pytest" in names, names


@pytest.mark.parametrize("argv,flags", _checked_commands(), ids=lambda v: " ".join(v[1:]) if isinstance(v, tuple) else "")
def test_readme_command_exists_with_its_flags(argv, flags):
    rc, text = _help(argv)
    assert rc == 0, f"`{' '.join(argv[1:])} --help` failed (rc {rc}):\n{text[-2000:]}"
    missing = [f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", text)]
    assert not missing, f"README uses {missing} with `{' '.join(argv[1:])}`, whose --help does not list them"


def test_parser_finds_flags_and_subcommands():
    # the parser itself, on a line of each kind
    line = 'pip install . && normrt bench m.onnx --repeat 50 --compare=none # note --not-a-flag'
    cmds = _commands(line)
    assert cmds[0][0] == "pip"
    argv, flags = _help_target(cmds[1])
    assert argv[1:] == ("-m", "normrt", "bench") and flags == ["--compare", "--repeat"]
    assert _help_target(["python", "scripts/e2e_bench.py", "--alone"])[1] == ["--alone"]
    assert _help_target(["ls", "-l"]) is None
