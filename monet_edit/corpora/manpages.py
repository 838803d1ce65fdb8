"""Manual pages as plain text, read from the files a Debian package installed.

Used for the translated manual pages (manpages-l10n: manpages-de, -fr, ...) of the out-of-source
language sets. The roff source is turned into text here (macros dropped, their text kept, escapes
replaced) rather than by running groff, so the text is the same on every machine and quick to make.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

DPKG_INFO = Path("/var/lib/dpkg/info")

# Macros whose arguments are text (man(7) and the common mdoc(7) ones); other requests are dropped.
_TEXT_MACROS = {"SH", "SS", "B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB", "IP",
                "Nm", "Nd", "Sh", "Ss", "Ar", "Fl", "Pa", "Em", "Sy", "Dq", "Qq", "Ql", "Li", "Xr", "Op",
                "It", "Dl", "Cm", "Ic", "Va", "Ev", "Fn", "Ft", "Fa"}  # fmt: skip
_BREAK_MACROS = {"PP", "P", "LP", "sp", "br", "SH", "SS", "TP", "IP", "Pp", "Sh", "Ss", "It", "Bl", "El"}
_ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}  # arguments alternate fonts, no spaces between
_NAMED = {"em": "—", "en": "–", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’",
          "co": "©", "rg": "®", "bu": "•", "ha": "^", "ti": "~", "mi": "-", "hy": "-", "lh": "<=",
          "rh": "=>", "<=": "≤", ">=": "≥", "mu": "×", "de": "°", "Fo": "«", "Fc": "»", "r!": "¡",
          "r?": "¿", "tm": "™", "fo": "‹", "fc": "›", "dg": "†"}  # fmt: skip


def package_files(package: str) -> list[Path]:
    """The files Debian package `package` installed (dpkg's own list), sorted; [] if not installed."""
    for name in (f"{package}.list", *(p.name for p in sorted(DPKG_INFO.glob(f"{package}:*.list")))):
        path = DPKG_INFO / name
        if path.is_file():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            return sorted(Path(line) for line in lines if line.strip())
    return []


def manpage_files(package: str) -> list[Path]:
    """The manual pages (…/man/<lang>/manN/*.N.gz, not symlinks) package `package` installed."""
    return [
        p for p in package_files(package)
        if "/man/" in p.as_posix() and p.name.endswith(".gz") and p.is_file() and not p.is_symlink()
    ]  # fmt: skip


def _escapes(line: str) -> str:
    line = re.sub(r"\\\((..)", lambda m: _NAMED.get(m.group(1), ""), line)
    line = re.sub(r"\\\[([^\]]*)\]", lambda m: _NAMED.get(m.group(1), ""), line)
    line = re.sub(r"\\\*(\(..|\[[^\]]*\]|.)", lambda m: {"(lq": "“", "(rq": "”", "R": "®"}.get(m.group(1), ""), line)
    line = re.sub(r"\\f(\(..|\[[^\]]*\]|.)", "", line)  # font changes
    line = re.sub(r"\\[sn](\(..|\[[^\]]*\]|[+-]?\d|.)", "", line)  # size changes, number registers
    line = re.sub(r"\\[hvwlLDNoXbxkZ]'[^']*'", "", line)  # motions and drawing
    line = line.replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ").replace("\\~", " ")
    line = re.sub(r"\\[&|^c:%)/,!0t]", "", line)
    return line.replace("\\\\", "\\")


def _args(rest: str) -> list[str]:
    return [a[1:-1] if len(a) > 1 and a.startswith('"') and a.endswith('"') else a
            for a in re.findall(r'"[^"]*"|\S+', rest)]  # fmt: skip


def roff_text(source: str) -> str:
    """A manual page's roff source as plain text: paragraphs separated by blank lines."""
    out: list[str] = []
    skip_until = None
    for raw in source.splitlines():
        if skip_until is not None:
            if raw.startswith(skip_until):
                skip_until = None
            continue
        if raw.startswith((".\\\"", "'\\\"", '.\\"', "\\\"")) or raw.strip() in (".", "'"):
            continue
        if raw.startswith((".", "'")):
            name, _, rest = raw[1:].lstrip().partition(" ")
            if name in ("de", "de1", "am", "ig"):
                skip_until = ".."
                continue
            if name in _BREAK_MACROS:
                out.append("")
            if name in _TEXT_MACROS and rest.strip():
                args = _args(_escapes(rest))
                if name == "IP":  # a tag, then an indent
                    args = args[:1]
                out.append(("" if name in _ALTERNATING else " ").join(args))
                if name in ("SH", "SS", "Sh", "Ss"):
                    out.append("")
            continue
        out.append(_escapes(raw))
    text = "\n".join(out)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def manpage_id(path: Path) -> str:
    """A page's id below its man directory, e.g. "de/man1/ls.1"."""
    parts = path.parts
    return "/".join(parts[parts.index("man") + 1 :])[: -len(".gz")]


def manpage_text(path: Path) -> str:
    """The text of one manual page ("" for a page that only links to another, or is unreadable)."""
    try:
        source = gzip.open(path).read().decode("utf-8", errors="replace")
    except (OSError, EOFError):
        return ""
    return "" if source.startswith(".so ") else roff_text(source)
