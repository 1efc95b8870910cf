"""Literal prefilter: one multi-literal scan per event picks the rules worth evaluating.

Each rule contributes needles (stream.needles.needles): lower-cased literals
of which one must occur in the event for the rule to match. Rules without
needles are always candidates. Like the router, the prefilter may over-select,
never miss.

One `NeedleIndex` holds the needles of all rules. Hyperscan scans it in about
a microsecond per event, ignoring ASCII case (so ASCII text is scanned as it
is; other text is lower-cased first), and reports each needle once;
pyahocorasick is the portable fallback. A `Bucket` narrows the hits to the rules of one log-source
key, lazily, per needle.
"""
from __future__ import annotations

import hashlib
import logging
from operator import itemgetter
from pathlib import Path
from typing import Callable, Iterable, Sequence

from sigstream.stream.cache import prune
from sigstream.stream.needles import ASCII_FOLD_CHARS, FOLD_ASCII, FOLD_UNICODE

log = logging.getLogger(__name__)
Scanner = Callable[[bytes], set]  # UTF-8 text, lower-cased unless ASCII -> needle ids
DB_FORMAT = "caseless-1"  # part of the cache key: bump when the compile flags change


class NeedleIndex:
    """Every rule's needles, scanned in one pass: text -> ids of the needles it contains."""

    def __init__(self, rule_needles: Iterable[tuple[int, frozenset[str] | None]],
                 cache_dir: Path | None = None):
        """`rule_needles`: (rule position, its needles or None) pairs."""
        by_needle: dict[str, list[int]] = {}
        unfiltered = []
        for idx, needles in rule_needles:
            if needles is None:
                unfiltered.append(idx)
            for n in sorted(needles or ()):  # sorted: the same rules give the same (cached) database
                by_needle.setdefault(n, []).append(idx)
        self.unfiltered = frozenset(unfiltered)
        self.needle_rules: list[tuple[int, ...]] = list(map(tuple, by_needle.values()))
        needles = list(by_needle)
        self.backend = "none"
        self.scan: Scanner = lambda text: set()
        if needles:
            try:
                self.scan = _hyperscan_scanner(needles, cache_dir)
                self.backend = "hyperscan"
            except ImportError:
                self.scan = _aho_corasick_scanner(needles)
                self.backend = "pyahocorasick"


def _hyperscan_scanner(needles: list[str], cache_dir: Path | None) -> Scanner:
    import hyperscan

    db = _load_cached_db(needles, cache_dir) if cache_dir else None
    if db is None:
        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        db.compile(expressions=[n.encode("utf-8", "surrogatepass") for n in needles],
                   ids=list(range(len(needles))), elements=len(needles),
                   flags=[hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_CASELESS] * len(needles),
                   literal=True)
        if cache_dir:
            _store_db(db, needles, cache_dir)
    scan = db.scan

    def scanner(data: bytes) -> set:
        found: set = set()
        scan(data, match_event_handler=_collect, context=found)
        return found
    return scanner


def _collect(needle: int, start: int, end: int, flags: int, found: set) -> None:
    found.add(needle)


def _db_path(needles: list[str], cache_dir: Path) -> Path:
    h = hashlib.sha256("\x00".join([DB_FORMAT, *needles]).encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return Path(cache_dir) / f"needles-{h}.hsdb"


def _load_cached_db(needles: list[str], cache_dir: Path):
    import hyperscan

    try:
        data = _db_path(needles, cache_dir).read_bytes()
        db = hyperscan.loadb(data, mode=hyperscan.HS_MODE_BLOCK)
        db.scratch = hyperscan.Scratch(db)
        return db
    except FileNotFoundError:
        return None
    except Exception as e:  # stale or foreign file: rebuild
        log.debug("ignoring cached needle database: %s", e)
        return None


def _store_db(db, needles: list[str], cache_dir: Path) -> None:
    import hyperscan

    try:
        path = _db_path(needles, cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(hyperscan.dumpb(db))
        tmp.replace(path)
        prune(path.parent, "needles-*.hsdb", keep=1024)  # one per busy bucket
    except OSError as e:
        log.debug("could not cache needle database: %s", e)


def _aho_corasick_scanner(needles: list[str]) -> Scanner:
    import ahocorasick

    automaton = ahocorasick.Automaton()
    for i, needle in enumerate(needles):
        automaton.add_word(needle, i)
    automaton.make_automaton()
    iterate, second = automaton.iter, itemgetter(1)
    return lambda data: set(map(second, iterate(data.decode("utf-8", "surrogatepass").lower())))


# A bucket that keeps receiving events gets a needle database of its own: its scan then
# reports only its own rules' needles. In the shared database two of three hits belong to
# other log sources' rules, and every hit costs a Python callback.
PROMOTE_AFTER_EVENTS = 64


class Bucket:
    """The candidate rules for one (channel, event id) key."""

    __slots__ = ("members", "always", "fold_ascii", "fold_unicode", "non_strings", "_index",
                 "_by_needle", "_own", "_events")

    def __init__(self, index: NeedleIndex, members: Iterable[int],
                 fold: dict[int, frozenset[int]] | None = None, non_strings: bool = True):
        """`fold`: rules by how their needles depend on re's Unicode case folding
        (stream.needles.needle_folding); they are added when the text could hide a needle.
        `non_strings`: whether the scanned text needs the event's numbers, bools and nulls
        (stream.engine.needs_non_strings)."""
        fold = fold or {}
        self.members = frozenset(members)
        self.always = sorted(self.members & index.unfiltered)
        self.fold_ascii = sorted(self.members & fold.get(FOLD_ASCII, frozenset()))
        self.fold_unicode = sorted(self.members & fold.get(FOLD_UNICODE, frozenset()))
        self.non_strings = non_strings
        self._index = index
        self._by_needle: dict[int, tuple[int, ...]] = {}
        self._own: NeedleIndex | None = None
        self._events = 0

    def _folded(self, text: str) -> list[int]:
        """Rules whose needles non-ASCII `text` may hide from the scan."""
        if self.fold_ascii and any(c in text for c in ASCII_FOLD_CHARS):
            return self.fold_ascii + self.fold_unicode
        return self.fold_unicode

    def candidates(self, text: str, needles_of: Callable[[int], frozenset[str] | None],
                   cache_dir: Path | None = None) -> Sequence[int]:
        """Rule positions that may match an event whose text (stream.engine.event_text) is `text`."""
        own = self._own
        if own is None:
            self._events += 1
            if self._events == PROMOTE_AFTER_EVENTS:
                own = self._own = NeedleIndex(((i, needles_of(i)) for i in sorted(self.members)),
                                              cache_dir)
        if text.isascii():
            data = text.encode("ascii")
            folded: list[int] = []
        else:
            data = text.lower().encode("utf-8", "surrogatepass")
            folded = self._folded(text)
        if own is not None:
            found = own.scan(data)
            if not folded:
                if not found:
                    return self.always
                if len(found) == 1 and not self.always:  # common: one needle, in rule order
                    return own.needle_rules[next(iter(found))]
            rules = set(self.always)
            needle_rules = own.needle_rules
            for v in found:
                rules.update(needle_rules[v])
        else:
            found = self._index.scan(data)
            if not found and not folded:
                return self.always
            rules = set(self.always)
            by_needle = self._by_needle
            for v in found:
                rs = by_needle.get(v)
                if rs is None:
                    members = self.members
                    rs = by_needle[v] = tuple(i for i in self._index.needle_rules[v] if i in members)
                rules.update(rs)
        rules.update(folded)
        return sorted(rules)
