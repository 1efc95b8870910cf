"""The `sigstream` command line: hunt, check and test (rule authors' tools)."""
from __future__ import annotations

import functools
import importlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click
import orjson
import yaml
from rich.console import Console
from rich.markup import escape

from sigstream.render import err_console
from sigstream.resources import bundled_rules
from sigstream.stream.errors import SigstreamError
from sigstream.stream.logfmt import JsonLogFormatter
from sigstream.stream.rules import LEVELS, LoadedRules, RuleSelection, load_rules

STATUSES = ("stable", "test", "experimental", "deprecated", "unsupported")
EXIT_USAGE = 2
log = logging.getLogger("sigstream")


class _Commands(click.Group):
    """The command group: a sigstream error anywhere in a command is one line on stderr
    and exit status 1 (its `location` says where), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SigstreamError as e:
            log.debug("command failed", exc_info=True)
            err_console.print(f"[red]error[/red] {escape(str(e))}", soft_wrap=True)
            sys.exit(1)


@click.group(cls=_Commands,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="Log verbosity (stderr).")
@click.option("--log-format", default="text", show_default=True, type=click.Choice(["text", "json"]),
              help="json: one JSON object per log line, for log shippers.")
@click.version_option(package_name="sigstream")
def main(log_level: str, log_format: str) -> None:
    """sigstream: Sigma detection for script-based and fileless Windows attacks.

    \b
    Rule authors:   sigstream hunt -r sigma_rules/ samples/
                    sigstream check sigma_rules/
                    sigstream test sigma_rules/
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if log_format == "json"
                         else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)


def rule_options(f: Callable) -> Callable:
    """Options shared by every command that loads rules. `--min-level` is the hidden old
    name of `--level`: the command sees one `min_level` either way."""

    @functools.wraps(f)
    def merged(*args: Any, min_level_alias: str | None = None, **kwargs: Any) -> Any:
        if min_level_alias:
            if kwargs.get("min_level") not in (None, min_level_alias):
                raise click.UsageError("--level and --min-level (its old name) disagree")
            kwargs["min_level"] = min_level_alias
        return f(*args, **kwargs)

    options = [
        click.option("-r", "--rules", "rule_paths", multiple=True,
                     type=click.Path(exists=True),
                     help="Rule file or directory (recursive *.yml/*.yaml). Repeatable. "
                          "Default: the bundled rule pack."),
        click.option("-p", "--pipeline", "pipelines", multiple=True,
                     type=click.Path(exists=True, dir_okay=False),
                     help="pySigma processing pipeline YAML (e.g. field mappings), after the built-in "
                          "Sysmon/Windows log-source pipelines. Repeatable."),
        click.option("--placeholders", type=click.Path(exists=True, dir_okay=False),
                     help="YAML mapping placeholder name -> list of values, for the `expand` modifier."),
        click.option("--level", "min_level", type=click.Choice(LEVELS),
                     help="Only rules of at least this level."),
        click.option("--min-level", "min_level_alias", type=click.Choice(LEVELS), hidden=True),
        click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES),
                     help="Only rules with these statuses (default: all but deprecated and unsupported)."),
        click.option("--rule-id", "rule_ids", multiple=True, help="Only these rule ids. Repeatable."),
        click.option("--tag", "tags", multiple=True, help="Only rules with one of these tags, e.g. attack.t1059.001."),
        click.option("--product", "products", multiple=True,
                     help="Only rules whose logsource product is this (e.g. windows). Repeatable."),
        click.option("--strict", is_flag=True, help="Exit 2 if any rule fails to load."),
        click.option("--no-cache", is_flag=True, help="Do not use the compile cache (~/.cache/sigstream)."),
    ]
    for option in reversed(options):
        merged = option(merged)
    return merged


def no_rules_message(loaded: LoadedRules, rule_paths: Any) -> str:
    """Why a load gave no rule to run, naming the folders/files searched."""
    where = ", ".join(str(p) for p in rule_paths) or "the bundled rule pack"
    if not loaded.files:
        return f"no Sigma rule found in {where} (searched *.yml, *.yaml recursively)"
    if loaded.errors:
        return (f"no rule loaded from {where}: {loaded.files} file(s), {len(loaded.errors)} "
                "rejected (see the rule errors above)")
    return (f"no rule selected from {where}: {loaded.files} file(s), {loaded.skipped} rule(s) "
            "left out by --level/--status/--rule-id/--tag/--product")


def exit_no_rules(message: str) -> None:
    """Running no rule is a usage error: one line, exit 2 (hunt, test; `run` may use it)."""
    err_console.print(f"[red]error[/red] {escape(message)}")
    sys.exit(EXIT_USAGE)


def _load(opts: dict[str, Any], quiet: bool = False, require_rules: bool = False) -> LoadedRules:
    """Load the rules the options select. `require_rules`: none at all is an error (exit 2,
    see no_rules_message); `run`'s reload must not exit, so it is not the default."""
    placeholders = None
    if opts.get("placeholders"):
        placeholders = yaml.safe_load(Path(opts["placeholders"]).read_text()) or {}
        if not isinstance(placeholders, dict):
            raise click.UsageError("--placeholders must be a YAML mapping of name -> list of values")
        placeholders = {str(k): [str(x) for x in (v if isinstance(v, list) else [v])]
                        for k, v in placeholders.items()}
    selection = RuleSelection(
        min_level=opts.get("min_level"),
        statuses=frozenset(opts["statuses"]) if opts.get("statuses") else None,
        rule_ids=frozenset(opts.get("rule_ids") or ()),
        tags=frozenset(t.lower() for t in opts.get("tags") or ()),
        products=frozenset(p.lower() for p in opts.get("products") or ()),
    )
    t0 = time.perf_counter()
    loaded = load_rules(opts.get("rule_paths") or [str(bundled_rules())], pipelines=opts.get("pipelines") or (),
                        placeholders=placeholders, selection=selection,
                        use_cache=not opts.get("no_cache"))
    log.info("loaded rules", extra={"fields": {
        "rules": len(loaded.rules), "errors": len(loaded.errors), "files": loaded.files,
        "cache_hits": loaded.cache_hits, "seconds": round(time.perf_counter() - t0, 3)}})
    if not quiet:
        for e in loaded.errors:
            err_console.print(f"[red]rule error[/red] {escape(str(e))}", markup=True, soft_wrap=True)
    if opts.get("strict") and loaded.errors:
        err_console.print(f"[red]--strict: {len(loaded.errors)} rule error(s)[/red]")
        sys.exit(EXIT_USAGE)
    if require_rules and not loaded.rules:
        exit_no_rules(no_rules_message(loaded, opts.get("rule_paths") or ()))
    return loaded


@main.command()
@rule_options
@click.argument("paths", nargs=-1, required=True)
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "jsonl", "csv"]),
              help="Output format (default: table on a terminal, jsonl otherwise).")
@click.option("--alert-format", type=click.Choice(["native", "ecs", "ocsf"]), default="native",
              show_default=True, help="Alert document shape for jsonl: sigstream's own, Elastic ECS, "
                                      "or OCSF Detection Finding (class 2004).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write detections to this file instead of stdout.")
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False, writable=True),
              help="Write undecodable records (file, position, reason) to this JSONL file.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: on for several files on a terminal).")
@click.option("--no-enrich", is_flag=True,
              help="Do not add the derived sigstream_* fields (decoded commands, script/registry indicators).")
@click.option("--ioc", "ioc_paths", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Known-bad hash list (text: one MD5/SHA1/SHA256/imphash:... per line; CSV: "
                   "hash,label[,level]); matched against Sysmon Hashes. Repeatable.")
@click.option("-j", "--jobs", type=click.IntRange(1), default=None,
              help="Processes reading and matching (default: the CPUs this process may use; inputs "
                   "under 32 MiB run in one). Same output, in the same order, as --jobs 1.")
@click.option("--from", "time_from", metavar="TIME",
              help="Only events at or after TIME: ISO 8601 date or date-time (UTC unless an offset "
                   "is given), or a span back from now (30m, 24h, 7d).")
@click.option("--to", "time_to", metavar="TIME",
              help="Only events at or before TIME (a date alone: up to the end of that day).")
def hunt(paths: tuple[str, ...], fmt: str | None, alert_format: str, output: str | None,
         errors_path: str | None, progress: bool | None, no_enrich: bool, ioc_paths: tuple[str, ...],
         jobs: int | None, time_from: str | None, time_to: str | None, **opts: Any) -> None:
    """Run Sigma rules over event files (.evtx, JSON lines, JSON arrays, XML exports, .gz,
    directories; `-` is standard input, any of these formats).

    \b
    Examples:
      sigstream hunt -r sigma_rules/ samples/
      sigstream hunt -r ../sigma/rules/windows --level high -f jsonl -o hits.jsonl <your-evtx-dir>
      zcat day.jsonl.gz | sigstream hunt --from 2026-11-24T08:00 --to 2026-11-24T12:00 -
    Events outside --from/--to are read and counted but not matched; events with no
    readable time are matched (the summary counts them).
    Exit status: 0 whether or not anything matched; 1 if an input path could not be
    read (the others are still hunted); 2 on usage errors, no rule to run, or --strict
    rule errors.
    """
    from sigstream.connectors.sinks import CsvSink, JsonlSink
    from sigstream.hunting import hunt_files
    from sigstream.render import TableSink
    from sigstream.stream.correlation_stage import correlation_stages
    from sigstream.stream.detector import Detector
    from sigstream.stream.engine import Engine
    from sigstream.time_window import TimeWindow

    try:
        window = TimeWindow.parse(time_from, time_to, now=time.time())
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--from/--to")
    files, unreadable_inputs = _input_files(paths)
    t0 = time.perf_counter()
    loaded = _load(opts)
    rules = list(loaded.rules)
    if ioc_paths:
        from sigstream.stream.ioc import load_ioc_files
        iocs = load_ioc_files(ioc_paths)
        for p in iocs.problems:
            err_console.print(f"[yellow]ioc list[/yellow] {p}", soft_wrap=True)
        rules.extend(iocs.rules)
    if not rules:   # an IOC list alone is something to run
        exit_no_rules(no_rules_message(loaded, opts.get("rule_paths") or ()))
    if no_enrich:
        enrich = None
    else:
        from sigstream.stream.enrich import enrich
    engine = Engine(rules, enrich=enrich)
    # files may come in any order: correlation windows wait for the whole input (no lateness)
    detector = Detector(engine, stages=correlation_stages(loaded.correlations, loaded.suppressed,
                                                          lateness_s=math.inf))
    load_seconds = time.perf_counter() - t0

    fmt = fmt or ("table" if (not output and sys.stdout.isatty()) else "jsonl")
    if alert_format != "native" and fmt != "jsonl":
        raise click.UsageError(f"--alert-format {alert_format} needs -f jsonl (table and csv show native alerts)")
    out_stream = open(output, "wb") if output else sys.stdout.buffer
    if fmt == "table":
        sink = TableSink(Console(file=open(output, "w") if output else sys.stdout))
    else:
        sink = JsonlSink(out_stream) if fmt == "jsonl" else CsvSink(out_stream)
    if alert_format != "native":
        from sigstream.stream.alert_formats import FormattingSink
        sink = FormattingSink(sink, alert_format)

    errors_out = open(errors_path, "wb") if errors_path else None
    reported = 0

    def on_error(err: Any) -> None:
        nonlocal reported
        reported += 1
        if reported <= 20:
            where = f"{err.path}" + (f":{err.position}" if err.position is not None else "")
            err_console.print(f"[yellow]unreadable record[/yellow] {where}: {err.reason}",
                              soft_wrap=True)
        elif reported == 21:
            err_console.print("[yellow]… more unreadable records; see --errors FILE[/yellow]")
        if errors_out:
            errors_out.write(orjson.dumps(err.to_dict()) + b"\n")

    show_progress = progress if progress is not None else (len(files) > 1 and sys.stderr.isatty())
    from sigstream.hunt_jobs import default_jobs
    with _progress(show_progress, len(files)) as advance:
        stats = hunt_files(files, detector, sink, on_error=on_error, on_progress=advance,
                           jobs=jobs or default_jobs(), min_parallel_bytes=0 if jobs else 32 << 20,
                           window=window)
    sink.close()
    if output:
        out_stream.close()
    if errors_out:
        errors_out.close()
    for e in engine.errors[:20]:
        err_console.print(f"[yellow]evaluation problem[/yellow] {e.rule.path}: {e.rule.title}: {e.reason}",
                          soft_wrap=True)
    rate = stats.events / stats.seconds if stats.seconds > 0 else 0.0
    window_note = ""
    if window is not None:
        window_note = f", {stats.outside:,} outside --from/--to"
        if stats.untimed:
            window_note += f", {stats.untimed:,} without a readable time (hunted anyway)"
    err_console.print(
        f"{stats.events:,} events read from {len(files):,} file(s)"
        f"{f' ({unreadable_inputs} input path(s) could not be read)' if unreadable_inputs else ''}, "
        f"{len(rules):,} rules loaded "
        f"({len(loaded.errors)} rejected, {load_seconds:.2f}s), {stats.alerts:,} detections"
        f"{window_note}, "
        f"{stats.unreadable + stats.failed:,} unreadable records, {stats.seconds:.2f}s, "
        f"{rate:,.0f} events/s", highlight=False)
    if unreadable_inputs:
        sys.exit(1)


def _input_files(paths: tuple[str, ...]) -> tuple[list[Path], int]:
    """The event files under `paths` (`-`: standard input, once) and how many paths
    could not be read: each is named on stderr and left out, the others are hunted
    (as grep does); hunt then exits 1."""
    from sigstream.connectors.readers import find_event_files
    from sigstream.hunting import STDIN

    problems = 0

    def cannot_read(e: OSError) -> None:
        nonlocal problems
        problems += 1
        err_console.print(f"[red]error[/red] cannot read {escape(str(e.filename))}: "
                          f"{escape(e.strerror or str(e))}")

    files: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        for f in [STDIN] if p == "-" else find_event_files([p], on_error=cannot_read):
            if f in seen:
                continue
            seen.add(f)
            if f == STDIN:
                if sys.stdin.isatty():   # not an error (as grep), but a silent wait looks like a hang
                    err_console.print("[dim]reading events from the terminal; end with Ctrl-D[/dim]")
                files.append(f)
                continue
            try:   # opened here so that a file we may not read is one clear line, not a record error
                open(f, "rb").close()
            except OSError as e:
                if e.filename is None:
                    e.filename = str(f)
                cannot_read(e)
                continue
            files.append(f)
    return files, problems


class _progress:
    """A rich progress bar over files on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self) -> Callable[[Path, float], None]:
        """advance(file, share): `share` of `file` is done (1.0: all of it; with --jobs,
        a large JSON-lines file advances by the byte ranges the workers finish)."""
        if not self.enabled:
            return lambda f, share=1.0: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        # No auto-refresh: its thread would make `hunt --jobs` start workers by forkserver
        # instead of fork (sigstream.hunt_jobs.start_method); the bar is redrawn on each step.
        self.bar = Progress(TextColumn("[bold]hunting"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.description}"),
                            console=err_console, transient=True, auto_refresh=False)
        self.bar.start()
        task = self.bar.add_task("", total=self.total)

        def advance(f: Path, share: float = 1.0) -> None:
            self.bar.update(task, advance=share, description=Path(f).name[:40])
            self.bar.refresh()
        return advance

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()


@main.command()
@click.argument("rule_paths", nargs=-1, type=click.Path(exists=True))
@click.option("-p", "--pipeline", "pipelines", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="pySigma processing pipeline YAML to apply before compiling (its log sources count "
                   "as known). Repeatable.")
@click.option("--placeholders", type=click.Path(exists=True, dir_okay=False),
              help="YAML mapping placeholder name -> list of values.")
@click.option("--no-cache", is_flag=True, help="Ignore the compile cache.")
@click.option("--strict", is_flag=True, help="Warnings count as errors (exit 1).")
def check(rule_paths: tuple[str, ...], strict: bool, **opts: Any) -> None:
    """Lint rules offline (default: the bundled pack): YAML, schema, modifiers, conditions, regexes,
    duplicate ids, unknown log sources, missing id/level, malformed ATT&CK tags.

    \b
    One line per problem, `file:line: error|warning: message`, sorted by file and line.
    Exit status: 0 clean (warnings allowed), 1 on errors (or warnings with --strict),
    2 when there is no rule to check.
    """
    from sigstream.stream.engine import Engine
    from sigstream.stream.rule_lint import ERROR, WARNING, Problem, Report, lint_file
    from sigstream.stream.rules import RuleError, find_rule_files, logsource_catalog, rule_line

    paths = rule_paths or (str(bundled_rules()),)
    opts.update(rule_paths=paths, statuses=STATUSES)
    loaded = _load(opts, quiet=True)
    if not loaded.files:
        exit_no_rules(no_rules_message(loaded, paths))
    if not (loaded.rules or loaded.correlations or loaded.errors):
        exit_no_rules(f"no Sigma rule in {', '.join(paths)}: {loaded.files} file(s) without rules")
    engine = Engine(loaded.rules)
    report = Report()
    report.add(Problem.of_error(e) for e in loaded.errors)
    report.add(Problem.of_error(RuleError(e.rule.path, e.rule.id, e.rule.title, e.reason,
                                          rule_line(e.rule.path, e.rule.id, e.rule.title)))
               for e in engine.errors)
    catalog = logsource_catalog(opts.get("pipelines") or ())
    for f in find_rule_files(paths):
        report.add(lint_file(str(f), f.read_bytes(), catalog))
    for p in report.sorted():
        click.echo(str(p))
    for c in loaded.correlations:
        click.echo(f"correlation: {c.path}: {c.title!r} [{c.id}] ({c.type} over "
                   f"{', '.join(c.rules)}, {c.timespan_s:g}s"
                   f"{', group by ' + ', '.join(c.group_by) if c.group_by else ''})")
    errors, warnings = report.count(ERROR), report.count(WARNING)
    click.echo(f"{loaded.files} file(s): {len(engine.rules)} rule(s) compiled, {errors} error(s), "
               f"{warnings} warning(s), {len(loaded.correlations)} correlation rule(s)"
               + (" (--strict: warnings are errors)" if strict and warnings else ""))
    sys.exit(1 if errors or (strict and warnings) else 0)


@main.command("test")
@click.argument("rule_paths", nargs=-1, type=click.Path(exists=True))
@click.option("-v", "--verbose", is_flag=True, help="List passing cases too.")
def test_rules(rule_paths: tuple[str, ...], verbose: bool) -> None:
    """Run the test cases next to rules (<rule>.tests.yml; default: the bundled pack); exit 1 on any failure.

    \b
    Format of <rule>.tests.yml:
      cases:
        - name: encoded launch
          expect: match            # or no_match
          event: {EventID: 1, Channel: Microsoft-Windows-Sysmon/Operational, ...}
    \b
    Next to a correlation rule, a case gives an event sequence instead:
        - name: three encoded launches in five minutes
          expect: match            # fires at least once; no_match: never
          count: 2                 # optional: exactly this many firings
          events: [{..., Computer: WKS-1, TimeCreated: '2026-11-24T10:04:00Z'}, ...]
    The events run in order through the Detector with the correlation stage (as hunt);
    the rules it references are looked up among all RULE_PATHS given.
    """
    from sigstream.connectors.normalize import normalize
    from sigstream.stream.enrich import enrich
    from sigstream.stream.rules import find_rule_files
    from sigstream.stream.ruletests import run_tests

    t0 = time.perf_counter()
    if rule_paths and not find_rule_files(rule_paths):
        exit_no_rules(no_rules_message(LoadedRules(), rule_paths))
    report = run_tests(rule_paths or (str(bundled_rules()),), prepare=normalize, enrich=enrich)
    for e in report.errors:
        click.echo(click.style("ERROR ", fg="red") + e)
    for r in report.results:
        if not r.passed:
            click.echo(click.style("FAIL  ", fg="red") + f"{r.test_file}: {r.name}: {r.detail}")
        elif verbose:
            click.echo(click.style("ok    ", fg="green") + f"{r.test_file}: {r.name}")
    for u in report.untested_rules:
        click.echo(click.style("note  ", fg="yellow") + f"{u}: no tests")
    passed = sum(r.passed for r in report.results)
    click.echo(f"{passed} passed, {len(report.failed)} failed"
               + (f", {len(report.errors)} errors" if report.errors else "")
               + f" in {time.perf_counter() - t0:.2f}s")
    sys.exit(0 if report.ok else 1)


# The pipeline commands live in their own modules and attach themselves to `main`.
for _module in ("sigstream.cmd_collect", "sigstream.cmd_run", "sigstream.cmd_alerts", "sigstream.cmd_agent",
                "sigstream.cmd_respond"):
    importlib.import_module(_module)
