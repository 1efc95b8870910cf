"""sigstream.render.MessageConsole: stderr messages are never hard-wrapped off a terminal."""
from __future__ import annotations

import io

from sigstream.render import MessageConsole

LONG = " ".join(f"word{n}" for n in range(60))   # ~470 characters


def test_not_a_terminal_one_line_whatever_the_width():
    out = io.StringIO()
    MessageConsole(file=out, width=40, highlight=False).print(f"[red]error[/red] {LONG}")
    assert out.getvalue() == f"error {LONG}\n"


def test_a_terminal_still_wraps_to_its_width():
    out = io.StringIO()
    MessageConsole(file=out, width=40, force_terminal=True, color_system=None).print(LONG)
    lines = out.getvalue().splitlines()
    assert len(lines) > 5 and max(map(len, lines)) <= 40


def test_soft_wrap_asked_for_is_kept_on_a_terminal():
    out = io.StringIO()
    MessageConsole(file=out, width=40, force_terminal=True, color_system=None, soft_wrap=True).print(LONG)
    assert out.getvalue() == LONG + "\n"
