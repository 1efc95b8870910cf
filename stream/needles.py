"""The prefilter's needles: which literals a rule requires of an event's text.

`needles(ir)` gives literal texts of which at least one must occur in the
event's lower-cased text for the rule to match (None: no such guarantee); the
prefilter (stream.prefilter) uses them to skip rules. `needle_folding(ir)` says
whether they come from a case-insensitive regex, whose Unicode case folding
str.lower() lacks. Owns the literal analysis of regexes (`_required_literals`),
which the compiler's regex guards (stream.compiler.regex_guard) share, and the
IR vocabulary both need (`STRING_KINDS`, `ROUTING_FIELDS`): this module imports
nothing from the compiler.
"""
from __future__ import annotations

import re
import re._constants as _sre_constants
import re._parser as _sre_parser

STRING_KINDS = ("eq", "contains", "startswith", "endswith")
ROUTING_FIELDS = frozenset({"Channel", "EventID"})
MIN_NEEDLE = 3

# How needles depend on `re`'s Unicode case folding, which str.lower() lacks: a needle
# taken from a case-insensitive regex can be missing from the lower-cased text of a value
# the regex matches ("ſ" matches "s", "ı" and "İ" match "i"; Greek "ς" matches "σ"...).
FOLD_NONE, FOLD_ASCII, FOLD_UNICODE = 0, 1, 2  # ASCII needles only see the few chars below
ASCII_FOLD_CHARS = "\u0130\u0131\u017f\u212a"  # non-ASCII chars re(?i) equates with ASCII letters


def needles(ir: tuple) -> frozenset[str] | None:
    """Literals of which one must appear in the event text if the rule matches."""
    return _needles(ir)[0]


def needle_folding(ir: tuple) -> int:
    """FOLD_NONE, FOLD_ASCII or FOLD_UNICODE: whether the needles of `ir` come from a
    case-insensitive regex, and then whether any of them is non-ASCII."""
    return _needles(ir)[1]


def _needles(ir: tuple) -> tuple[frozenset[str] | None, int]:
    kind = ir[0]
    if kind == "and":
        best: tuple[frozenset[str] | None, int] = (None, FOLD_NONE)
        for c in ir[1]:
            n = _needles(c)
            if n[0] is not None and (best[0] is None or _needle_score(n[0]) > _needle_score(best[0])):
                best = n
        return best
    if kind == "or":
        acc: set[str] = set()
        fold = FOLD_NONE
        for c in ir[1]:
            n, f = _needles(c)
            if n is None:
                return None, FOLD_NONE
            acc |= n
            fold = max(fold, f)
        return frozenset(acc), fold
    if kind == "field":
        if ir[1] in ROUTING_FIELDS:
            return None, FOLD_NONE
        return _spec_needle(ir[2])
    if kind == "kw":
        return _spec_needle(ir[1])
    if kind == "const" and ir[1] is False:
        return frozenset(), FOLD_NONE  # never matches: no needle needed
    return None, FOLD_NONE


def _spec_needle(spec: tuple) -> tuple[frozenset[str] | None, int]:
    if spec[0] in STRING_KINDS:
        text = spec[1].lower()
    elif spec[0] == "wild":
        text = spec[2].lower()
    elif spec[0] == "re":
        found = regex_needles(spec[1], spec[2])
        if found is None or not regex_ignores_case(spec[1], spec[2]):
            return found, FOLD_NONE
        return found, FOLD_ASCII if all(n.isascii() for n in found) else FOLD_UNICODE
    else:
        return None, FOLD_NONE
    return (frozenset((text,)) if _useful(text) else None), FOLD_NONE


RARE_CHARS = "^`"  # cmd and PowerShell escape characters: rare in event data


def _useful(needle: str) -> bool:
    # counted in bytes: a single non-ASCII character (homoglyph, emoji) is selective enough,
    # and so are two characters with an escape character among them ("^^")
    if len(needle) >= 2 and any(c in RARE_CHARS for c in needle):
        return True
    return len(needle.encode("utf-8")) >= (MIN_NEEDLE if needle.isascii() else 2)


def regex_needles(pattern: str, flags: int = 0, min_bytes: int = MIN_NEEDLE) -> frozenset[str] | None:
    """Literals (lower-cased) one of which any match of the regex must contain (None: none known)."""
    try:
        parsed = _sre_parser.parse(pattern, flags)
    except Exception:
        return None
    return _seq_needles(list(parsed), min_bytes)


_INLINE_IGNORECASE = re.compile(r"\(\?[aiLmsux]*i[aiLmsux]*[:)]")


def regex_ignores_case(pattern: str, flags: int) -> bool:
    """re.IGNORECASE given as a flag, or inline anywhere, global `(?i)` or scoped `(?i:...)`."""
    return bool(flags & re.IGNORECASE) or bool(_INLINE_IGNORECASE.search(pattern))


def _required_literals(items: list, min_bytes: int = 1,
                       lower: bool = False) -> list[frozenset[str]]:
    """Every literal requirement a match must meet, from the top-level sequence and its
    groups: each a set of alternatives (one for a literal run; the branches' best needles
    for an alternation), of which the matched text contains one."""
    c = _sre_constants
    out: list[frozenset[str]] = []
    run: list[str] = []

    def end_run() -> None:
        if run:
            text = "".join(run)
            out.append(frozenset((text.lower() if lower else text,)))
            run.clear()

    for op, av in items:
        if op is c.LITERAL:
            run.append(chr(av))
            continue
        end_run()
        if op is c.SUBPATTERN:
            out.extend(_required_literals(list(av[3]), min_bytes, lower))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT) and av[0] >= 1:
            out.extend(_required_literals(list(av[2]), min_bytes, lower))
        elif op is c.BRANCH:
            alts = [_seq_needles(list(branch), min_bytes, lower) for branch in av[1]]
            if all(alts):
                out.append(frozenset().union(*alts))
    end_run()
    return out


def _seq_needles(items: list, min_bytes: int = MIN_NEEDLE, lower: bool = True) -> frozenset[str] | None:
    """The best-scoring requirement whose literals are all at least `min_bytes` long."""
    best: frozenset[str] | None = None
    for cand in _required_literals(items, min_bytes, lower):
        if all(len(n.encode("utf-8")) >= min_bytes for n in cand) and (
                best is None or _needle_score(cand) > _needle_score(best)):
            best = cand
    return best


# Text found in almost every Windows event: needles inside it select nearly everything.
_UBIQUITOUS = "\n".join((
    "c:\\windows\\system32\\svchost.exe", "c:\\windows\\syswow64\\", "c:\\program files (x86)\\",
    "c:\\users\\", "c:\\programdata\\", "microsoft corporation",
    "microsoft\u00ae windows\u00ae operating system", "nt authority\\system", "c:\\windows\\explorer.exe",
    ".dll", "microsoft-windows-", "\\windows\\system32\\cmd.exe",
    # shells and LOLBins: in a large share of process creations (Image, ParentImage, command
    # lines), so a rule's command-line needles select far fewer events than its image name
    "\\powershell.exe", "\\powershell_ise.exe", "\\pwsh.exe", "pwsh.dll", "\\cmd.exe",
    "\\rundll32.exe", "\\regsvr32.exe", "\\mshta.exe", "\\wscript.exe", "\\cscript.exe",
    "\\msiexec.exe", "\\conhost.exe", "\\wmic.exe", "\\net.exe", "\\net1.exe", "\\reg.exe",
    "\\schtasks.exe", "\\sc.exe", "\\certutil.exe", "\\bitsadmin.exe", "\\wmiprvse.exe",
    "\\taskhostw.exe", "\\dllhost.exe", "\\services.exe", "\\lsass.exe", "\\winlogon.exe",
))


def _needle_score(n: frozenset[str]) -> tuple[int, int, int]:
    """Prefer needle sets without ubiquitous needles, then longest shortest needle, then fewer."""
    if not n:
        return (2, 1 << 30, 0)
    rare = not any(x in _UBIQUITOUS for x in n)
    return (int(rare), min(len(x) for x in n), -len(n))

