r"""Plain text of man pages written with the ``man(7)`` macros, read from the troff source.

Enough of troff for retrieval text, not typesetting: section headings (``.SH``), sub-headings
(``.SS``), paragraphs (``.PP``, ``.TP``, ``.IP`` ...), font macros (``.B``, ``.BR`` ...), no-fill
blocks (``.nf``/``.EX``) kept line by line, tables (``.TS``/``.TE``) as rows of cells, and the
common escapes (``\fB``, ``\-``, ``\(em``, ``\*(lq`` ...). Macro definitions, conditionals and
layout requests are skipped. Reading the source keeps the build fast and free of groff.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# named glyphs (\(xx and \[xx]) and predefined strings (\*(xx) worth keeping
_GLYPHS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘",
    "cq": "’", "bu": "•", "co": "©", "rg": "®", "tm": "™", "mu": "×", "di": "÷", "de": "°", "+-": "±",
    "<=": "≤", ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "ti": "~", "ha": "^", "rs": "\\", "ga": "`",
    "at": "@", "sh": "#", "Do": "$", "sl": "/", "ba": "|", "or": "|", "lB": "[", "rB": "]", "lC": "{",
    "rC": "}", "la": "⟨", "ra": "⟩", "dg": "†", "sc": "§", "ps": "¶", "ul": "_", "em-dash": "—",
    "R": "®", "Tm": "™", "Aq": "'",
}  # fmt: skip
_ESCAPE = re.compile(
    r"\\(?:"
    r"\((?P<glyph2>..)"
    r"|\[(?P<glyph>[^\]]*)\]"
    r"|\*(?:\((?P<string2>..)|\[(?P<string>[^\]]*)\]|(?P<string1>.))"
    r"|f(?:\(..|\[[^\]]*\]|.)"
    r"|s(?:[+-]?\d+|\(\d\d|\[[^\]]*\])"
    r"|n(?:[+-]?)(?:\(..|\[[^\]]*\]|.)"
    r"|[hvwXoSlLDbxNkZA]'[^']*'"
    r"|(?P<char>.)"
    r")"
)
_SIMPLE = {"e": "\\", "\\": "\\", "-": "-", ".": ".", " ": " ", "~": " ", "0": " ", "t": " ", "'": "'", "`": "`"}
_FONT_JOINED = {"BR", "BI", "IB", "IR", "RB", "RI"}
_FONT_SPACED = {"B", "I", "SM", "SB"}
_PARAGRAPH = {"PP", "P", "LP", "sp", "HP", "TP", "TQ", "IP", "ns"}
_NOFILL_ON, _NOFILL_OFF = {"nf", "EX"}, {"fi", "EE"}


def _escape(match: re.Match[str]) -> str:
    for group in ("glyph2", "glyph", "string2", "string", "string1"):
        name = match.group(group)
        if name is not None:
            if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,5}", name):
                return chr(int(name[1:], 16))
            return _GLYPHS.get(name, "")
    char = match.group("char")
    return _SIMPLE.get(char, "") if char is not None else ""


def inline(text: str) -> str:
    """Text of one troff line with its escapes resolved (fonts and spacing hints dropped)."""
    text = re.sub(r'\\".*$', "", text)  # a comment runs to the end of the line
    return _ESCAPE.sub(_escape, text)


def macro_arguments(text: str) -> list[str]:
    """Split a macro's arguments on spaces, honouring double quotes (``""`` is a literal quote)."""
    args: list[str] = []
    current: list[str] = []
    quoted = started = False
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            started, i = True, i + 2
            continue
        if char == '"':
            if quoted and text[i + 1 : i + 2] == '"':
                current.append('"')
                i += 2
                continue
            quoted, started = not quoted, True
        elif char in " \t" and not quoted:
            if started:
                args.append("".join(current))
            current, started = [], False
        else:
            current.append(char)
            started = True
        i += 1
    if started:
        args.append("".join(current))
    return args


@dataclass
class ManPage:
    """A man page as text: its ``.TH`` name and section, and ``(HEADING, paragraphs)`` in order."""

    name: str = ""
    section: str = ""
    sections: list[tuple[str, list[str]]] = field(default_factory=list)

    def text_of(self, heading: str) -> list[str]:
        """The paragraphs of the first section called ``heading`` (case-insensitive; empty if none)."""
        return next((paras for h, paras in self.sections if h.upper() == heading.upper()), [])


class _Writer:
    """Collects lines into paragraphs and paragraphs into sections."""

    def __init__(self) -> None:
        self.page = ManPage()
        self.lines: list[tuple[str, bool]] = []  # (text, written in no-fill mode)
        self.fill = True

    def line(self, text: str) -> None:
        if text.strip() or not self.fill:
            self.lines.append((text.rstrip() if not self.fill else text.strip(), not self.fill))

    def paragraph(self) -> None:
        if not self.lines:
            return
        text = self.lines[0][0]
        for (_, before_nofill), (line, nofill) in zip(self.lines, self.lines[1:], strict=False):
            text += ("\n" if nofill or before_nofill else " ") + line
        self.lines = []
        text = text.strip("\n")
        if text.strip():
            if not self.page.sections:
                self.page.sections.append(("", []))
            self.page.sections[-1][1].append(text)

    def heading(self, title: str) -> None:
        self.paragraph()
        self.page.sections.append((" ".join(title.split()).upper(), []))


def parse_man(source: str) -> ManPage:
    """The sections and paragraphs of a ``man(7)`` page's troff source."""
    out = _Writer()
    pending: str | None = None  # "SH"/"SS"/"TP": the next text line is a heading or a tag
    skip_until: str | None = None  # the line that ends a skipped block ("..", "\\}")
    table: str | None = None  # None, or the part of a .TS block being read: "format" or "data"
    for raw in source.splitlines():
        if skip_until is not None:
            if raw.strip().startswith(skip_until) or (skip_until == "\\}" and "\\}" in raw):
                skip_until = None
            continue
        if table is not None:
            table = _table_line(raw, table, out)
            continue
        is_request = raw[:1] in (".", "'")
        if is_request:
            request = raw[1:].lstrip()
            name, _, rest = request.partition(" ")
            name = name.strip()
            args = [inline(a) for a in macro_arguments(rest)]
            if name in ("de", "de1", "am", "ig"):
                skip_until = ".."
            elif name in ("if", "ie", "el"):
                if "\\{" in raw and "\\}" not in raw:
                    skip_until = "\\}"
            elif name == "TH":
                out.page.name, out.page.section = (args + ["", ""])[:2]
            elif name in ("SH", "SS"):
                title = " ".join(args)
                if name == "SH":
                    out.heading(title) if title else out.paragraph()
                else:
                    out.paragraph()
                    out.line(title)
                    out.paragraph()
                pending = None if title else name
            elif name in _PARAGRAPH:
                out.paragraph()
                if name in ("TP", "TQ"):
                    pending = "TP"
                elif name == "IP" and args and args[0].strip() not in ("", "•", "*", "-"):
                    out.line(args[0])
                    out.paragraph()
            elif name in _NOFILL_ON | _NOFILL_OFF:
                out.fill = name in _NOFILL_OFF
            elif name == "TS":
                out.paragraph()
                table = "options"
            elif name in _FONT_JOINED or name in _FONT_SPACED or name in ("SY", "OP", "UE", "ME"):
                text = _font_macro(name, args)
                if text:
                    pending = _text(text, pending, out)
            elif name == "br" and not out.fill:
                out.line("")
            continue
        if raw.startswith('\\"'):
            continue
        pending = _text(inline(raw), pending, out)
    out.paragraph()
    return out.page


def _font_macro(name: str, args: list[str]) -> str:
    if name in _FONT_JOINED:
        return "".join(args)
    if name == "OP":
        return f"[{' '.join(args)}]"
    if name in ("UE", "ME"):  # the punctuation that follows a link
        return "".join(args)
    return " ".join(args)


def _text(text: str, pending: str | None, out: _Writer) -> str | None:
    if pending == "SH":
        out.heading(text)
        return None
    if pending in ("SS", "TP"):  # a sub-heading or a tag (an option, an error name) stands alone
        out.paragraph()
        out.line(text)
        out.paragraph()
        return None
    out.line(text)
    return None


def _table_line(raw: str, state: str, out: _Writer) -> str | None:
    stripped = raw.strip()
    if stripped.startswith(".TE"):
        out.paragraph()
        return None
    if state == "options":
        state = "format"
        if stripped.endswith(";"):
            return state
    if state == "format":
        return "data" if stripped.endswith(".") else "format"
    if stripped.startswith((".", "'")) or stripped in ("_", "=", "T}", "T{"):
        return state
    cells = [inline(cell).replace("T{", "").replace("T}", "").strip() for cell in raw.split("\t")]
    text = "  ".join(c for c in cells if c)
    if text:
        out.line(text)
        out.paragraph()
    return state
