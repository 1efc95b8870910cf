"""IOC hash lists: known-bad MD5/SHA1/SHA256/IMPHASH values as synthetic detection rules.

A list is a file, either

- plain text, one hash per line, `#` starts a comment (whole line or trailing); the
  label is the file's stem, or `# label: <text>` / `# level: <level>` lines set it;
- CSV with `hash,label[,level]` (an optional header row `hash,label,level` is skipped).

The algorithm of a hash follows from its length (32 hex: MD5, 40: SHA1, 64: SHA256);
an `imphash:` prefix (or `md5:`/`sha1:`/`sha256:`) names it explicitly, since an
IMPHASH is 32 hex digits like an MD5. Bad lines are reported as `file:line: reason`
and skipped; the rest of the list loads.

Each (list, label) becomes one `Rule` whose IR is an OR of `contains` leaves on the
Sysmon `Hashes` field (and `Hash`, which event 15 uses), algorithm-qualified the way
Sysmon writes it (`md5=<hash>`), so an MD5 never matches an IMPHASH with the same
digits. The compiler merges those leaves into one automaton: thousands of hashes
cost about one lookup. Rule ids are uuid5 of (list path name, label): stable across
reloads, so alerts de-duplicate.

`IocWatcher(paths).check()` reloads lists whose modification time or content changed
and returns the complete new set of IOC rules (or None when nothing changed).
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sigstream.stream.rules import LEVELS, Rule

IOC_NAMESPACE = uuid.UUID("6f2d3c8e-5a41-4b7e-9c0d-2e6b1a9f4c75")
DEFAULT_LEVEL = "high"
SYSMON_CHANNEL = "Microsoft-Windows-Sysmon/Operational"
# process creation, driver load, image load, file stream hash, file delete (archived / detected)
HASH_EVENT_IDS = (1, 6, 7, 15, 23, 26)
HASH_FIELDS = ("Hashes", "Hash")
ALGORITHMS = {"md5": 32, "sha1": 40, "sha256": 64, "imphash": 32}
_BY_LENGTH = {32: "md5", 40: "sha1", 64: "sha256"}
_HEX = re.compile(r"[0-9a-fA-F]+")
_META = re.compile(r"#\s*(label|level)\s*:\s*(.+)$", re.IGNORECASE)


@dataclass
class IocProblem:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class IocList:
    path: str
    name: str
    # label -> (level, [(algorithm, lower-case hash)])
    entries: dict[str, tuple[str, list[tuple[str, str]]]] = field(default_factory=dict)
    problems: list[IocProblem] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(v[1]) for v in self.entries.values())


def parse_hash(text: str) -> tuple[str, str]:
    """(algorithm, lower-case hex) of one hash, or ValueError with the reason."""
    t = text.strip()
    algo = None
    if ":" in t or "=" in t:
        prefix, _, rest = t.replace("=", ":", 1).partition(":")
        algo = prefix.strip().lower().replace("-", "")
        if algo not in ALGORITHMS:
            raise ValueError(f"unknown hash algorithm {prefix.strip()!r} (md5, sha1, sha256, imphash)")
        t = rest.strip()
    if not t:
        raise ValueError("empty hash")
    if not _HEX.fullmatch(t):
        raise ValueError(f"not a hexadecimal hash: {t[:80]!r}")
    if algo is None:
        algo = _BY_LENGTH.get(len(t))
        if algo is None:
            raise ValueError(f"{len(t)} hex digits is no MD5 (32), SHA1 (40) or SHA256 (64)")
    elif len(t) != ALGORITHMS[algo]:
        raise ValueError(f"{algo} needs {ALGORITHMS[algo]} hex digits, got {len(t)}")
    return algo, t.lower()


def _level(text: str, where: str, problems: list[IocProblem], path: str, line: int) -> str | None:
    lv = text.strip().lower()
    if lv in LEVELS:
        return lv
    problems.append(IocProblem(path, line, f"unknown level {text.strip()!r} in {where} "
                                           f"(one of {', '.join(LEVELS)}); using {DEFAULT_LEVEL}"))
    return None


def load_list(path: str | Path, text: str | None = None) -> IocList:
    """Parse one IOC list file (plain text or CSV, decided by the .csv suffix or commas)."""
    p = Path(path)
    if text is None:
        text = p.read_text(encoding="utf-8-sig", errors="replace")
    out = IocList(str(p), p.stem)
    seen: set[tuple[str, str, str]] = set()

    def add(label: str, level: str, algo: str, h: str) -> None:
        if (label, algo, h) in seen:
            return
        seen.add((label, algo, h))
        lv, hashes = out.entries.setdefault(label, (level, []))
        hashes.append((algo, h))

    is_csv = p.suffix.lower() == ".csv" or _looks_csv(text)
    if is_csv:
        for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
            cells = [c.strip() for c in row]
            if not cells or not any(cells) or cells[0].startswith("#"):
                continue
            if lineno == 1 and cells[0].lower() in ("hash", "sha256", "md5", "sha1", "imphash", "ioc"):
                continue
            try:
                algo, h = parse_hash(cells[0])
            except ValueError as e:
                out.problems.append(IocProblem(out.path, lineno, str(e)))
                continue
            label = cells[1] if len(cells) > 1 and cells[1] else out.name
            level = DEFAULT_LEVEL
            if len(cells) > 2 and cells[2]:
                level = _level(cells[2], "column 3", out.problems, out.path, lineno) or DEFAULT_LEVEL
            add(label, level, algo, h)
    else:
        label, level = out.name, DEFAULT_LEVEL
        for lineno, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("#"):
                m = _META.match(stripped)
                if m and m.group(1).lower() == "label":
                    label = m.group(2).strip() or out.name
                elif m:
                    level = _level(m.group(2), "a level comment", out.problems, out.path, lineno) \
                        or DEFAULT_LEVEL
                continue
            body = stripped.split("#", 1)[0].strip()
            if not body:
                continue
            try:
                algo, h = parse_hash(body)
            except ValueError as e:
                out.problems.append(IocProblem(out.path, lineno, str(e)))
                continue
            add(label, level, algo, h)
    return out


def _looks_csv(text: str) -> bool:
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            return "," in s.split("#", 1)[0]
    return False


def rule_id(list_name: str, label: str) -> str:
    return str(uuid.uuid5(IOC_NAMESPACE, f"{list_name}\x00{label}"))


def rules_of(ioc: IocList) -> list[Rule]:
    """One synthetic rule per (list, label)."""
    rules = []
    for label, (level, hashes) in ioc.entries.items():
        if not hashes:
            continue
        origin_sel = f"ioc:{ioc.name}"
        leaves = tuple(
            ("field", f, ("contains", f"{algo}={h}", False), (origin_sel, f"{f}|contains", f"{algo.upper()}={h}"))
            for algo, h in hashes for f in HASH_FIELDS)
        eids = tuple(("field", "EventID", ("num", e), ("logsource", "EventID", str(e)))
                     for e in HASH_EVENT_IDS)
        ir = ("and", (
            ("field", "Channel", ("eq", SYSMON_CHANNEL.lower(), False),
             ("logsource", "Channel", SYSMON_CHANNEL)),
            ("or", eids),
            ("or", leaves) if len(leaves) > 1 else leaves[0],
        ))
        algos = sorted({a for a, _ in hashes})
        rules.append(Rule(
            id=rule_id(ioc.name, label),
            title=f"Known-bad hash: {label} ({ioc.name})",
            level=level,
            status="stable",
            description=(f"A Sysmon event whose Hashes field holds one of {len(hashes)} known-bad "
                         f"{'/'.join(a.upper() for a in algos)} value(s) listed under {label!r} "
                         f"in the IOC list {ioc.path}."),
            tags=("ioc.hash", f"ioc.list.{_tag(ioc.name)}"),
            references=(),
            author="sigstream IOC list",
            date=None,
            logsource={"product": "windows", "service": "sysmon"},
            falsepositives=("A wrong entry in the IOC list",),
            ir=ir,
            path=ioc.path,
        ))
    return rules


def _tag(name: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "_", name.lower()).strip("_") or "list"


@dataclass
class LoadedIocs:
    rules: list[Rule]
    problems: list[IocProblem]
    lists: list[IocList]


def load_ioc_files(paths: Iterable[str | Path]) -> LoadedIocs:
    rules: list[Rule] = []
    problems: list[IocProblem] = []
    lists = []
    for p in paths:
        try:
            ioc = load_list(p)
        except OSError as e:
            problems.append(IocProblem(str(p), 0, f"cannot read: {e}"))
            continue
        lists.append(ioc)
        problems.extend(ioc.problems)
        rules.extend(rules_of(ioc))
    return LoadedIocs(rules, problems, lists)


class IocWatcher:
    """Reload IOC lists when they change; `check()` between batches.

    `check()` returns the complete list of IOC rules when any file's modification time,
    size or content changed since the last call (the first call loads everything), and
    None otherwise. A file that disappears keeps its last good rules until it returns;
    problems of the last reload are in `self.problems`.
    """

    def __init__(self, paths: Iterable[str | Path]):
        self.paths = [Path(p) for p in paths]
        self._stat: dict[Path, tuple[int, int]] = {}
        self._digest: dict[Path, str] = {}
        self._rules: dict[Path, list[Rule]] = {}
        self.problems: list[IocProblem] = []

    def check(self) -> list[Rule] | None:
        changed = False
        for p in self.paths:
            try:
                st = p.stat()
            except OSError:
                continue  # gone for now (editors replace files): keep the last rules
            sig = (st.st_mtime_ns, st.st_size)
            if self._stat.get(p) == sig and p in self._rules:
                continue
            self._stat[p] = sig
            try:
                data = p.read_bytes()
            except OSError:
                continue
            digest = hashlib.sha256(data).hexdigest()
            if self._digest.get(p) == digest and p in self._rules:
                continue  # touched, same content
            self._digest[p] = digest
            ioc = load_list(p, data.decode("utf-8-sig", errors="replace"))
            self._rules[p] = rules_of(ioc)
            self.problems = [x for x in self.problems if x.path != str(p)] + ioc.problems
            changed = True
        if not changed:
            return None
        return [r for p in self.paths for r in self._rules.get(p, [])]
