"""The README's commands work as written on a fresh clone.

Every ```bash block of README.md is read in order. A `sigstream ...` command must name a real
subcommand with options it accepts and valid choices, and every relative path it names must
exist in the repository unless it is a `<placeholder>`, lies under a path an earlier README
command creates (`git clone ... ../sigma`), or is an output (`-o FILE`, `> FILE`). Other
commands that run a file of the repository (`deploy/kafka/broker.sh`, `./run-tests`) must name
one that exists. The cheap offline commands (hunt, check, test, demo on bundled files) are run.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sigstream.cli import main

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

PLACEHOLDER = re.compile(r"<[^<>\s]+>")
OPERATORS = {"&&", "||", "|", ";", "&"}
REDIRECTS = {">", ">>", "2>", "2>>", "&>"}
# Run for real: need no broker, no Windows host, and take seconds on bundled files.
OFFLINE = {"hunt", "check", "test", "demo"}


@dataclass
class Command:
    """One simple command of a README block, with what checking it found."""
    line: str
    argv: list[str]
    subcommand: tuple[str, ...] = ()      # ("alerts", "tail") for `sigstream alerts tail`
    problems: list[str] = field(default_factory=list)
    self_contained: bool = True           # no placeholder, cloned path or output file

    @property
    def runnable(self) -> bool:
        return (len(self.subcommand) == 1 and self.subcommand[0] in OFFLINE
                and self.self_contained and not self.problems)


def bash_blocks(markdown: str) -> list[str]:
    """The bodies of the ```bash fenced blocks, in document order."""
    return re.findall(r"^```bash[ \t]*\n(.*?)^```", markdown, flags=re.S | re.M)


def _split(line: str) -> list[list[str]]:
    """Shell words of one line, comments dropped, cut into simple commands at && | ; &."""
    lex = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lex.whitespace_split = True
    lex.commenters = "#"
    commands, current = [], []
    for word in lex:
        if word in OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    return [c for c in commands if c]


def _path_problem(value: str, created: list[Path]) -> tuple[str | None, bool]:
    """(problem or None, self-contained) for a path a command reads."""
    if PLACEHOLDER.search(value):
        return None, False
    if value == "-" or "://" in value or os.path.isabs(value) or re.match(r"^[A-Za-z]:[\\/]", value):
        return None, False
    target = Path(os.path.normpath(REPO / value))
    if any(target == c or c in target.parents for c in created):
        return None, False
    if REPO != target and REPO not in target.parents:   # ../sigma on this machine proves nothing
        return f"{value}: outside the repository and not created by an earlier command", True
    if glob.has_magic(value):
        return (None if glob.glob(str(target)) else f"{value}: matches nothing in the repository"), True
    return (None if target.exists() else f"{value}: no such path in the repository"), True


def _check_sigstream(cmd: Command, args: list[str], created: list[Path]) -> None:
    """Resolve the subcommand, parse its options with click, check paths and choices."""
    command: click.Command = main
    names: list[str] = []
    while True:
        ctx = click.Context(command, info_name=" ".join(["sigstream", *names]))
        parser = command.make_parser(ctx)
        if isinstance(command, click.Group):
            parser.allow_interspersed_args = False
        try:
            values, rest, _ = parser.parse_args(list(args))
        except click.UsageError as e:
            cmd.problems.append(f"sigstream {' '.join(names)}: {e.format_message()}")
            return
        if not isinstance(command, click.Group) or not rest:
            break
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            cmd.problems.append(f"sigstream {' '.join(names)}: no subcommand {rest[0]!r}")
            return
        names.append(rest[0])
        command, args = sub, rest[1:]
    cmd.subcommand = tuple(names)
    if rest:
        cmd.problems.append(f"sigstream {' '.join(names)}: unexpected arguments {rest}")
    hidden = {o: p for p in command.params if getattr(p, "hidden", False) for o in p.opts + p.secondary_opts}
    for word in args:
        if word.split("=", 1)[0] in hidden:         # an old name kept as an alias: show the new one
            alias = hidden[word.split("=", 1)[0]]
            cmd.problems.append(f"sigstream {' '.join(names)}: {word.split('=', 1)[0]} is a hidden alias"
                                f" (of {alias.name!r}); show the current option name")
    for param in command.params:
        raw = values.get(param.name)
        if raw is None or getattr(param, "is_flag", False):
            continue
        for value in raw if isinstance(raw, (list, tuple)) else [raw]:
            is_path = isinstance(param.type, click.Path)
            if is_path and not param.type.exists:      # written, not read: an output
                cmd.self_contained = False
            elif is_path or "/" in value or (isinstance(param, click.Argument)
                                             and re.search("path|file|dir|input", param.name)):
                # a PATHS argument is an input whatever its click type (hunt's is text)
                problem, contained = _path_problem(value, created)
                cmd.self_contained &= contained
                if problem:
                    cmd.problems.append(f"sigstream {' '.join(names)}: {problem}")
            elif PLACEHOLDER.search(value):
                cmd.self_contained = False
            else:
                try:
                    param.type.convert(value, param, ctx)
                except click.BadParameter as e:
                    cmd.problems.append(f"sigstream {' '.join(names)} {param.opts[0]}: {e.format_message()}")


def check_commands(markdown: str) -> list[Command]:
    """Every simple command of the ```bash blocks, checked in document order."""
    created: list[Path] = []
    out: list[Command] = []
    for block in bash_blocks(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            for argv in _split(line):
                cmd = Command(line=line.strip(), argv=argv)
                out.append(cmd)
                words = list(argv)
                while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                    words.pop(0)                           # FOO=bar sigstream ...
                for i, word in enumerate(words):           # > out.jsonl: an output
                    if word in REDIRECTS:
                        cmd.self_contained = False
                        words = words[:i]
                        break
                if not words:
                    continue
                if words[0] == "sigstream":
                    _check_sigstream(cmd, words[1:], created)
                elif words[:2] == ["git", "clone"]:
                    urls = [i for i, w in enumerate(words) if "://" in w or w.startswith("git@")]
                    if urls:
                        after = words[urls[0] + 1:]
                        dest = after[0] if after else Path(words[urls[0]]).stem
                        created.append(Path(os.path.normpath(REPO / dest)))
                elif words[0] == "mkdir":
                    created += [Path(os.path.normpath(REPO / w)) for w in words[1:] if not w.startswith("-")]
                elif "/" in words[0]:                      # deploy/kafka/broker.sh, ./run-tests
                    problem, _ = _path_problem(words[0], created)
                    if problem:
                        cmd.problems.append(problem)
    return out


README_COMMANDS = check_commands(README.read_text(encoding="utf-8"))


def test_readme_shows_sigstream_commands():
    # The extractor finding nothing would make every check below pass vacuously.
    subcommands = {c.subcommand[0] for c in README_COMMANDS if c.subcommand}
    assert {"hunt", "check", "test", "run", "collect"} <= subcommands, subcommands


@pytest.mark.parametrize("cmd", README_COMMANDS, ids=[" ".join(c.argv) for c in README_COMMANDS])
def test_readme_command_is_valid(cmd: Command):
    assert cmd.problems == [], f"README line {cmd.line!r}"


RUNNABLE = [c for c in README_COMMANDS if c.runnable]


@pytest.mark.parametrize("cmd", RUNNABLE, ids=[" ".join(c.argv) for c in RUNNABLE])
def test_readme_offline_command_runs(cmd: Command, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("SIGSTREAM_BOOTSTRAP", raising=False)   # demo: the in-process transport
    words = [w for w in cmd.argv if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)]
    result = CliRunner().invoke(main, words[1:])
    assert result.exit_code == 0, f"{cmd.line}\n{result.output}\n{result.exception!r}"


def test_offline_commands_are_run():
    assert {c.subcommand[0] for c in RUNNABLE} >= {"hunt", "check", "test"}


# ------------------------------------------------------------- the checker itself ---


def _problems(markdown: str) -> list[str]:
    return [p for c in check_commands(markdown) for p in c.problems]


def _block(*lines: str) -> str:
    return "text\n\n```bash\n" + "\n".join(lines) + "\n```\n"


def test_checker_accepts_repository_paths_placeholders_and_outputs():
    assert _problems(_block(
        "sigstream hunt -r sigma_rules/ samples/            # a comment with logs/",
        "sigstream hunt --level high -f jsonl -o hits.jsonl <your-evtx-dir>",
        "sigstream collect samples/fileless-intrusion.jsonl --sink stdout > envelopes.jsonl",
        "./run-tests tests/unit && deploy/kafka/broker.sh start",
    )) == []


def test_checker_rejects_a_path_missing_from_the_repository():
    assert _problems(_block("sigstream hunt -r sigma_rules/ logs/")) == [
        "sigstream hunt: logs/: no such path in the repository"]
    assert _problems(_block("sigstream check rules/does-not-exist.yml")) != []
    assert _problems(_block("deploy/kafka/nope.sh start")) != []


def test_checker_accepts_a_clone_only_after_it():
    clone = "git clone --depth 1 https://github.com/SigmaHQ/sigma ../sigma"
    use = "sigstream hunt -r ../sigma/rules/windows samples/"
    assert _problems(_block(clone, use)) == []
    assert _problems(_block(use, clone)) == [
        "sigstream hunt: ../sigma/rules/windows: outside the repository and not created by an earlier command"]


def test_checker_rejects_unknown_subcommands_options_and_choices():
    assert _problems(_block("sigstream hunnt samples/")) == ["sigstream : no subcommand 'hunnt'"]
    assert "No such option '--no-such-option'" in _problems(_block("sigstream hunt --no-such-option samples/"))[0]
    assert _problems(_block("sigstream alerts tail --level extreme")) != []
    assert _problems(_block("sigstream alerts frobnicate")) == ["sigstream alerts: no subcommand 'frobnicate'"]


def test_checker_rejects_hidden_aliases():
    hunt = main.commands["hunt"]
    aliases = [o for p in hunt.params if getattr(p, "hidden", False) for o in p.opts if o.startswith("--")]
    if not aliases:
        pytest.skip("hunt has no hidden option alias to try")
    assert "hidden alias" in _problems(_block(f"sigstream hunt {aliases[0]} high samples/"))[0]


def test_checker_only_reads_bash_blocks():
    assert _problems("```yaml\nsigstream hunt logs/\n```\n\n`sigstream hunt logs/`\n") == []
    assert len(check_commands(_block("a && sigstream check sigma_rules/ | b"))) == 3


def test_offline_commands_selected_for_running():
    cmds = check_commands(_block(
        "sigstream check sigma_rules/",
        "sigstream hunt -o hits.jsonl samples/",
        "sigstream hunt <your-evtx-dir>",
        "sigstream run -r sigma_rules/",
    ))
    assert [c.runnable for c in cmds] == [True, False, False, False]


def test_readme_links_to_files_that_exist():
    text = README.read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([\w./-]+(?:#[\w-]*)?)\)", text)]
    assert targets, "no relative links found: the pattern is wrong"
    assert [t for t in targets if t and not (REPO / t).exists()] == []
