"""Reading the project's text files (specs, configs, presets, traces) with errors that name the
file and the line, so that a binary or wrongly encoded file is reported as such."""

from __future__ import annotations

from pathlib import Path


class TextFileError(ValueError):
    """A file that is not UTF-8 text; the message names the file, the line and the byte."""


def read_text(path: str | Path) -> str:
    """The UTF-8 text of ``path`` with universal newlines, as :meth:`Path.read_text` gives it.

    Raises
    ------
    OSError
        The file cannot be read (missing, a directory, no permission).
    TextFileError
        The file is not UTF-8 text (a binary file, another encoding).
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TextFileError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); is it a binary file or in another encoding?"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")
