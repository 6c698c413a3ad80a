"""The log on disk: segment file names, and reading and writing their bytes.

Lines are handled as raw bytes here; what a line means is `record`'s business.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

SEGMENT_RE = re.compile(r"^audit-(\d{12})\.jsonl$")
HEAD_FILE = "audit.head.json"


def segment_name(first_seq: int) -> str:
    return f"audit-{first_seq:012d}.jsonl"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(first seq, path) of every segment file, in chain order."""
    found = []
    for entry in directory.iterdir():
        m = SEGMENT_RE.match(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), entry))
    found.sort()
    return found


def read_tail(path: Path, want_lines: int) -> tuple[bytes, int]:
    """The last bytes of `path` holding at least `want_lines` complete lines
    (plus any unterminated fragment), and the file offset they start at."""
    size = path.stat().st_size
    block = 64 * 1024
    chunks: list[bytes] = []
    newlines = 0
    start = size
    with path.open("rb") as f:
        while start > 0:
            step = min(block, start)
            start -= step
            f.seek(start)
            chunk = f.read(step)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
            # want_lines + 1 newlines guarantee the first kept line is whole.
            if newlines > want_lines:
                break
    data = b"".join(reversed(chunks))
    if start > 0:
        cut = data.index(b"\n") + 1
        data, start = data[cut:], start + cut
    return data, start


def split_lines(
    data: bytes, base: int
) -> tuple[list[tuple[int, bytes]], tuple[int, bytes] | None]:
    """Complete lines as (offset, bytes without newline), and a trailing fragment."""
    lines = []
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        lines.append((base + pos, data[pos:nl]))
        pos = nl + 1
    fragment = (base + pos, data[pos:]) if pos < len(data) else None
    return lines, fragment


def iter_segment_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes without newline, terminated) for each line."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.endswith(b"\n"):
                yield number, raw[:-1], True
            else:
                yield number, raw, False


def fsync_dir(directory: Path) -> None:
    """Make `directory`'s entries (a new or renamed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
