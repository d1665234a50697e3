"""The one display-name rule, and how any text reaches a console as data.

Every name a spec holds (study, trial, experiment, variant key, grid label, probe) is shown to people:
in terminals, logs, tables, MLflow and reports. It may hold any printable text, Rich markup such as
``[bold]`` or ``[/]`` included, but none of the characters that let text act on what shows it:
control characters (C0, DEL, C1: ESC, CR, LF, ...), unpaired surrogates, line and paragraph
separators, and the bidirectional embedding, override and isolate controls that reorder a line.

Text reaches a console only through :func:`plain_console`: it never interprets markup, emoji codes
or highlighting, and it writes any of those characters in free text (an error, a log tail) as an
escape such as ``\\x1b``, so a name stays data wherever it is printed.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from rich.console import Console
from rich.text import Text

BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))
"""LRE, RLE, PDF, LRO, RLO and LRI, RLI, FSI, PDI: they reorder the text shown after them."""
_UNSHOWABLE_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")
_LINE_BREAKS = "\n\t"
"""Kept by :func:`shown`: free text (a log tail, a traceback) has lines and indents."""


def unshowable(char: str) -> bool:
    """Whether ``char`` may act on a terminal or a log rather than be shown (see the module)."""
    return unicodedata.category(char) in _UNSHOWABLE_CATEGORIES or char in BIDI_CONTROLS


def check_display_name(text: str) -> str:
    """``text`` unchanged, or a ValueError naming the code points a display name must not hold."""
    bad = sorted({f"U+{ord(c):04X}" for c in text if unshowable(c)})
    if bad:
        raise ValueError(
            "names are display text and must not contain control, line-separator or bidirectional "
            f"override characters (found {', '.join(bad)})"
        )
    return text


MAX_NAME_CHARS = 200
DisplayName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(check_display_name)]
"""A name shown to people (study, trial, experiment, probe): printable text, never used as a path."""


def shown(text: Any, keep_lines: bool = True) -> str:
    """``str(text)`` with every unshowable character written as its Python escape (``\\x1b``,
    ``\\r``, ``\\u202e``), newlines and tabs too unless ``keep_lines``: what a console or log may
    print of any text (a name in one line, such as an error's path: ``keep_lines=False``)."""
    text = str(text)
    kept = _LINE_BREAKS if keep_lines else ""
    if not any(unshowable(c) and c not in kept for c in text):
        return text
    return "".join(c.encode("unicode_escape").decode("ascii") if unshowable(c) and c not in kept else c for c in text)


def styled(text: Any, style: str = "") -> Text:
    """``text`` as a Rich Text in ``style``: shown literally, whatever brackets or codes it holds."""
    return Text(shown(text), style=style)


class PlainConsole(Console):
    """A Rich console that prints strings as they are: no markup, emoji codes or highlighting, and
    unshowable characters escaped (:func:`shown`). Styles come only from :func:`styled` texts.
    With ``exit_on_broken_pipe=False`` a reader that went away raises BrokenPipeError to the caller
    (a long-running process decides) instead of Rich's exit of the whole process."""

    def __init__(self, *, exit_on_broken_pipe: bool = True, **options: Any) -> None:
        super().__init__(**options)
        self.exit_on_broken_pipe = exit_on_broken_pipe

    def on_broken_pipe(self) -> None:
        """Rich's exit, or a BrokenPipeError (see the class)."""
        if self.exit_on_broken_pipe:
            super().on_broken_pipe()
        else:
            raise BrokenPipeError("the console's reader went away")

    def render_str(self, text: str, **options: Any) -> Text:
        """``text`` as plain Text (table cells, titles and printed strings all come through here)."""
        return super().render_str(shown(text), **{**options, "markup": False, "emoji": False, "highlight": False})


def plain_console(**options: Any) -> PlainConsole:
    """A :class:`PlainConsole` (``options`` as Rich's Console takes them)."""
    return PlainConsole(**{"markup": False, "emoji": False, "highlight": False, **options})
