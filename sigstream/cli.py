"""The `sigstream` command line: hunt, check and test (rule authors' tools)."""
from __future__ import annotations

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
    """Options shared by every command that loads rules."""
    options = [
        click.option("-r", "--rules", "rule_paths", multiple=True,
                     type=click.Path(exists=True),
                     help="Rule file or directory (recursive *.yml/*.yaml). Repeatable. "
                          "Default: the bundled rule pack."),
        click.option("--pipeline", "pipelines", multiple=True, type=click.Path(exists=True, dir_okay=False),
                     help="pySigma processing pipeline YAML (e.g. field mappings), after the built-in "
                          "Sysmon/Windows log-source pipelines. Repeatable."),
        click.option("--placeholders", type=click.Path(exists=True, dir_okay=False),
                     help="YAML mapping placeholder name -> list of values, for the `expand` modifier."),
        click.option("--min-level", type=click.Choice(LEVELS), help="Only rules of at least this level."),
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
        f = option(f)
    return f


def _load(opts: dict[str, Any], quiet: bool = False) -> LoadedRules:
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
    return loaded


@main.command()
@rule_options
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
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
              help="Worker processes (default: the CPUs this process may use; inputs under 32 MiB "
                   "run in one). Same output, in the same order, as --jobs 1.")
def hunt(paths: tuple[str, ...], fmt: str | None, alert_format: str, output: str | None,
         errors_path: str | None, progress: bool | None, no_enrich: bool, ioc_paths: tuple[str, ...],
         jobs: int | None, **opts: Any) -> None:
    """Run Sigma rules over event files (.evtx, JSON lines, JSON arrays, XML exports, .gz, directories).

    \b
    Examples:
      sigstream hunt -r sigma_rules/ samples/
      sigstream hunt -r ../sigma/rules/windows --min-level high -f jsonl -o hits.jsonl logs/
    Exit status: 0 whether or not anything matched; 2 on usage errors or --strict rule errors.
    """
    from sigstream.connectors.readers import find_event_files
    from sigstream.connectors.sinks import CsvSink, JsonlSink
    from sigstream.hunting import hunt_files
    from sigstream.render import TableSink
    from sigstream.stream.correlation_stage import correlation_stages
    from sigstream.stream.detector import Detector
    from sigstream.stream.engine import Engine

    try:
        files = find_event_files(paths)
    except FileNotFoundError as e:
        raise click.UsageError(str(e))
    t0 = time.perf_counter()
    loaded = _load(opts)
    rules = list(loaded.rules)
    if ioc_paths:
        from sigstream.stream.ioc import load_ioc_files
        iocs = load_ioc_files(ioc_paths)
        for p in iocs.problems:
            err_console.print(f"[yellow]ioc list[/yellow] {p}", soft_wrap=True)
        rules.extend(iocs.rules)
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
                           jobs=jobs or default_jobs(), min_parallel_bytes=0 if jobs else 32 << 20)
    sink.close()
    if output:
        out_stream.close()
    if errors_out:
        errors_out.close()
    for e in engine.errors[:20]:
        err_console.print(f"[yellow]evaluation problem[/yellow] {e.rule.path}: {e.rule.title}: {e.reason}",
                          soft_wrap=True)
    rate = stats.events / stats.seconds if stats.seconds > 0 else 0.0
    err_console.print(
        f"{stats.events:,} events read from {len(files):,} file(s), {len(rules):,} rules loaded "
        f"({len(loaded.errors)} rejected, {load_seconds:.2f}s), {stats.alerts:,} detections, "
        f"{stats.unreadable + stats.failed:,} unreadable records, {stats.seconds:.2f}s, "
        f"{rate:,.0f} events/s", highlight=False)


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
        self.bar = Progress(TextColumn("[bold]hunting"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.description}"),
                            console=err_console, transient=True)
        self.bar.start()
        task = self.bar.add_task("", total=self.total)
        return lambda f, share=1.0: self.bar.update(task, advance=share, description=Path(f).name[:40])

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()


@main.command()
@click.argument("rule_paths", nargs=-1, type=click.Path(exists=True))
@click.option("--pipeline", "pipelines", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="pySigma processing pipeline YAML to apply before compiling.")
@click.option("--placeholders", type=click.Path(exists=True, dir_okay=False),
              help="YAML mapping placeholder name -> list of values.")
@click.option("--no-cache", is_flag=True, help="Ignore the compile cache.")
def check(rule_paths: tuple[str, ...], **opts: Any) -> None:
    """Validate rules offline (default: the bundled pack): YAML, schema, modifiers, conditions, regexes.

    One line per problem with its location; exit 1 if any rule has an error.
    """
    from sigstream.stream.engine import Engine
    from sigstream.stream.rules import RuleError, rule_line

    opts.update(rule_paths=rule_paths or (str(bundled_rules()),), statuses=STATUSES)
    loaded = _load(opts, quiet=True)
    engine = Engine(loaded.rules)
    problems = [str(e) for e in loaded.errors]
    problems += [str(RuleError(e.rule.path, e.rule.id, e.rule.title, e.reason,
                               rule_line(e.rule.path, e.rule.id, e.rule.title))) for e in engine.errors]
    for p in problems:
        click.echo(f"error: {p}")
    for c in loaded.correlations:
        click.echo(f"correlation: {c.path}: {c.title!r} [{c.id}] ({c.type} over "
                   f"{', '.join(c.rules)}, {c.timespan_s:g}s"
                   f"{', group by ' + ', '.join(c.group_by) if c.group_by else ''})")
    click.echo(f"{loaded.files} file(s): {len(engine.rules)} rule(s) compiled, "
               f"{len(problems)} error(s), {len(loaded.correlations)} correlation rule(s)")
    sys.exit(1 if problems else 0)


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
    from sigstream.stream.ruletests import run_tests

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
               + (f", {len(report.errors)} errors" if report.errors else ""))
    sys.exit(0 if report.ok else 1)


# The pipeline commands live in their own modules and attach themselves to `main`.
for _module in ("sigstream.cmd_collect", "sigstream.cmd_run", "sigstream.cmd_agent", "sigstream.cmd_respond"):
    importlib.import_module(_module)
