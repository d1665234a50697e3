"""The data roots rule: a local path a spec names is read only if it resolves, links and ``..``
included, under one of the data roots (``KRPO_BENCH_DATA_ROOTS``).

The server applies :func:`under_roots` when a spec is submitted; workers apply it again where they
open the file (:func:`data_file`, :func:`data_folder`), against their own data roots: the path is
resolved, checked, and then opened one component at a time without following any link, so a link
swapped in after the check is refused rather than followed. Refusals name the spec field and the path
as given, never anything read from a file.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from krpo_bench.settings import get_settings

_PINNED = Path("/proc/self/fd")
"""Where an open folder can be named by its descriptor (Linux), so a library reads that very folder."""


class OutsideDataRoots(PermissionError):
    """A local path that does not resolve under the data roots (or turned into a link while opened)."""


def resolve_under_roots(path: str | Path, roots: Sequence[Path]) -> Path | None:
    """The real path of ``path`` (absolute after ``~`` expansion; symlinks and ``..`` resolved) when
    it lies inside one of ``roots``, else None."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        return None
    resolved = Path(os.path.realpath(candidate))
    return resolved if any(resolved.is_relative_to(os.path.realpath(root)) for root in roots) else None


def under_roots(path: str | Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` (absolute after ``~`` expansion) resolves, symlinks and ``..`` included,
    inside one of ``roots``."""
    return resolve_under_roots(path, roots) is not None


def _refusal(field: str, path: str, roots: Sequence[Path], why: str = "") -> OutsideDataRoots:
    shown = ", ".join(str(r) for r in roots)
    return OutsideDataRoots(
        f"{field}: {path[:200]!r} is not under the data roots ({shown}; KRPO_BENCH_DATA_ROOTS){why}; "
        "local paths must be absolute and resolve, links included, under a data root"
    )


def _is_link(name: str, parent: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode)
    except OSError:
        return False


def open_under_roots(path: str, field: str, roots: Sequence[Path] | None = None, *, folder: bool = False) -> int:
    """A descriptor of the file (or ``folder``) at ``path``, opened only if its real path lies under
    ``roots`` (default: this process's data roots) and no link was followed on the way; raises
    :class:`OutsideDataRoots` naming ``field``, or the OSError of a missing path inside the roots."""
    roots = tuple(get_settings().data_roots if roots is None else roots)
    resolved = resolve_under_roots(path, roots)
    if resolved is None:
        raise _refusal(field, path, roots)
    parts = resolved.parts  # opened as checked: a link that appears on the way is refused, not followed
    fd = os.open(parts[0], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts[1:], start=2):
            directory = folder or depth < len(parts)
            kind = os.O_DIRECTORY if directory else os.O_NONBLOCK  # a FIFO must not block the open
            child = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | kind, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as err:
        swapped = err.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, fd)
        os.close(fd)
        if swapped:
            raise _refusal(field, path, roots, ": a link appeared in it while it was opened") from None
        raise
    if not folder and not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{field}: {path[:200]!r} is no regular file")
    return fd


@contextmanager
def data_file(path: str, field: str, roots: Sequence[Path] | None = None) -> Iterator[TextIO]:
    """The text file at ``path`` (UTF-8), opened as :func:`open_under_roots` opens it."""
    with os.fdopen(open_under_roots(path, field, roots), encoding="utf-8") as handle:
        yield handle


@contextmanager
def data_folder(path: str, field: str, roots: Sequence[Path] | None = None) -> Iterator[Path]:
    """The folder at ``path``, opened as :func:`open_under_roots` opens it and named by its open
    descriptor while the context lasts (a library given this path reads that very folder). Links
    inside it must resolve under the roots too."""
    roots = tuple(get_settings().data_roots if roots is None else roots)
    fd = open_under_roots(path, field, roots, folder=True)
    try:
        pinned = _PINNED / str(fd) if _PINNED.is_dir() else Path(os.path.realpath(Path(path).expanduser()))
        for parent, folders, files in os.walk(pinned):
            for name in folders + files:
                entry = Path(parent, name)
                if entry.is_symlink() and not under_roots(os.path.realpath(entry), roots):
                    raise _refusal(
                        field, path, roots, f": its link {str(entry.relative_to(pinned))[:200]!r} leads out of them"
                    )
        yield pinned
    finally:
        os.close(fd)
