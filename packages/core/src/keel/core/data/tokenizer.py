"""Split text files and the byte-level BPE tokenizers trained on them.

A split file (``train.txt``, ``val.txt``, ``test.txt``) is a sequence of documents, each followed
by a line holding only the end-of-text token ``<|endoftext|>`` (:data:`DOC_SEPARATOR`). A plain
text file without such lines reads as one document, so users can point keel at their own text.
The same token separates documents in the token stream, which is why the format lives here.

A byte-level tokenizer has all 256 bytes in its base vocabulary, so it never needs an unknown token
and ``decode(encode(text)) == text`` for any string. It is trained on the training split only, so
no validation or test text leaks into the vocabulary.

A trained tokenizer is saved as ``<data_dir>/tokenizer-bpe-<vocab_size>.json`` with a sidecar
``tokenizer-bpe-<vocab_size>.meta.json`` that records what it was trained on. The file is reused
while the settings match and the training files are unchanged: same size and modification time, or
(after a copy or a ``touch``) the same content hash.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from keel.core.errors import ConfigError, DataError

DOC_SEPARATOR = "<|endoftext|>"
EOT = DOC_SEPARATOR  # the tokenizer's name for it
_META_FORMAT = 1


def check_text_file(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a readable, non-empty UTF-8 text file and return it as a Path.

    The whole file is decoded once, in chunks, so a bad byte deep inside a large file is caught
    here rather than halfway through tokenization.

    Raises:
        DataError: The file is missing, not a file, unreadable, empty, binary or not UTF-8.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, has_text = 0, False
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                nul = chunk.find(b"\0")
                if nul >= 0:
                    raise DataError(
                        f"{path}: looks like a binary file (NUL byte at offset {offset + nul}), expected UTF-8 text"
                    )
                try:
                    text = decoder.decode(chunk)
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"{path}: not UTF-8 text (byte 0x{chunk[err.start]:02x} at offset {offset + err.start})"
                    ) from None
                has_text = has_text or bool(text.strip())
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (the file ends inside a multi-byte character)") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    if offset == 0:
        raise DataError(f"{path}: file is empty")
    if not has_text:
        raise DataError(f"{path}: file holds only whitespace")
    return path


def iter_document_pieces(path: str | os.PathLike[str], max_chars: int = 1 << 20) -> Iterator[tuple[str, bool]]:
    """Stream a split file as pieces of at most about ``max_chars`` characters.

    Long documents are cut at line boundaries so that a multi-megabyte file without separators
    never has to be held, tokenized or trained on as one string.

    Args:
        path: A split file (see the module docstring for its format).
        max_chars: Soft upper bound on a piece's length; a single longer line is kept whole.

    Yields:
        ``(text, ends_document)``: ``ends_document`` is true for the last piece of each document.
    """
    lines: list[str] = []
    size = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.rstrip("\r\n") == DOC_SEPARATOR:
                # The newline before the separator belongs to the file format, not to the document.
                if lines:
                    lines[-1] = lines[-1].removesuffix("\n")
                yield "".join(lines), True
                lines, size = [], 0
                continue
            if size + len(line) > max_chars and lines:
                yield "".join(lines), False
                lines, size = [], 0
            lines.append(line)
            size += len(line)
    if lines:
        yield "".join(lines), True


def read_documents(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield the documents of a split file, separator lines removed."""
    parts: list[str] = []
    for piece, ends in iter_document_pieces(path):
        parts.append(piece)
        if ends:
            yield "".join(parts)
            parts = []


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def default_tokenizer_path(data_dir: str | os.PathLike[str], vocab_size: int) -> Path:
    """Where the tokenizer of ``data_dir`` with ``vocab_size`` tokens is stored."""
    return Path(data_dir) / f"tokenizer-bpe-{vocab_size}.json"


def meta_path(tokenizer_path: str | os.PathLike[str]) -> Path:
    """The sidecar file holding a tokenizer's training metadata."""
    path = Path(tokenizer_path)
    return path.with_name(path.name.removesuffix(".json") + ".meta.json")


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A short hash of a tokenizer's full definition; caches of token ids are keyed by it."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()[:16]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: str | os.PathLike[str], with_hash: bool = True) -> dict[str, object]:
    """Size, modification time and (optionally) content hash of a file, as stored in metadata."""
    stat = Path(path).stat()
    record: dict[str, object] = {"name": Path(path).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if with_hash:
        record["sha256"] = file_sha256(path)
    return record


def file_unchanged(path: str | os.PathLike[str], record: dict[str, object]) -> bool:
    """Whether ``path`` still has the content described by ``record`` (see :func:`file_record`).

    Size and modification time decide cheaply; when only the time differs the content hash does.
    """
    try:
        stat = Path(path).stat()
    except OSError:
        return False
    if stat.st_size != record.get("size"):
        return False
    return stat.st_mtime_ns == record.get("mtime_ns") or file_sha256(path) == record.get("sha256")


def _as_paths(files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(files, (str, os.PathLike)):
        return [Path(files)]
    return [Path(f) for f in files]


def _training_texts(files: Iterable[Path]) -> Iterator[str]:
    for path in files:
        for piece, _ in iter_document_pieces(path):
            if piece:
                yield piece


def train_bpe_tokenizer(
    train_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    vocab_size: int,
    out_path: str | os.PathLike[str],
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer and save it (with its metadata) to ``out_path``.

    Documents are fed one by one with the separator lines removed, so merges never span two
    documents and ``<|endoftext|>`` enters the vocabulary only as the special token.

    Args:
        train_files: The training split file(s).
        vocab_size: Upper bound on the vocabulary size (256 bytes + ``<|endoftext|>`` + merges). A
            small corpus may run out of pairs seen ``min_frequency`` times and stop below it.
        out_path: Where to save the tokenizer JSON; the metadata goes beside it.
        min_frequency: How often a pair must occur to be merged.

    Returns:
        The trained tokenizer.

    Raises:
        ConfigError: ``vocab_size`` is too small to hold the byte alphabet and the special token.
        DataError: A training file is missing, empty, binary or not UTF-8.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ConfigError(f"vocab_size={vocab_size} is too small; a byte-level BPE needs at least {len(alphabet) + 1}")
    files = [check_text_file(f) for f in _as_paths(train_files)]
    tokenizer = Tokenizer(models.BPE())
    # No prefix space: it would add a space to the text and break exact round trips.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=alphabet,  # every byte, seen or not, so unseen text still encodes
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_texts(files), trainer=trainer)

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, tokenizer.to_str(pretty=False))
    meta = {
        "format": _META_FORMAT,
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "actual_vocab_size": tokenizer.get_vocab_size(),
        "tokenizer_sha256": file_sha256(out),
        "train_files": [file_record(f) for f in files],
    }
    write_text_atomic(meta_path(out), json.dumps(meta, indent=2) + "\n")
    return tokenizer


def _reusable(out: Path, files: list[Path], vocab_size: int, min_frequency: int) -> bool:
    try:
        meta = json.loads(meta_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    records = meta.get("train_files") or []
    return (
        meta.get("format") == _META_FORMAT
        and meta.get("vocab_size") == vocab_size
        and meta.get("min_frequency") == min_frequency
        and len(records) == len(files)
        and all(file_unchanged(f, r) for f, r in zip(files, records, strict=True))
        and out.is_file()
        and file_sha256(out) == meta.get("tokenizer_sha256")  # an edited or truncated file is retrained
    )


def load_or_train_tokenizer(
    train_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    vocab_size: int,
    out_path: str | os.PathLike[str],
    min_frequency: int = 2,
) -> Tokenizer:
    """Load the tokenizer saved at ``out_path`` if it was trained on these files with these settings.

    Otherwise train a new one with :func:`train_bpe_tokenizer`, replacing the old file.

    Args:
        train_files: The training split file(s).
        vocab_size: Upper bound on the vocabulary size.
        out_path: Where the tokenizer is (or will be) saved.
        min_frequency: How often a pair must occur to be merged.

    Returns:
        The loaded or freshly trained tokenizer.
    """
    out = Path(out_path)
    files = _as_paths(train_files)
    if _reusable(out, files, vocab_size, min_frequency):
        return Tokenizer.from_file(str(out))
    return train_bpe_tokenizer(files, vocab_size, out, min_frequency=min_frequency)
