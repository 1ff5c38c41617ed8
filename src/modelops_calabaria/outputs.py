"""Where a command may write: the one check of every output path (``calibrate --output``,
``worker --output``, ``simulate -o``, ``report -o``).

Outputs go into a directory the command creates or an existing directory, never over
anything that is not a directory: a device node, a FIFO, a socket or a symbolic link
is refused, as is an existing regular file (except, for ``report -o``, an earlier
report: a regular ``.html`` file). Every check creates nothing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from modelops_calabaria.errors import ConfigurationError

_FIX = "pass a directory path (new or existing)"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return "a file"
    return "not a directory"


def _creatable_parent(path: Path, what: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable directory."""
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigurationError(f"{what} {path} cannot be created: {ancestor} is {_kind(os.lstat(ancestor).st_mode)}, "
                                 f"not a directory: {_FIX}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigurationError(f"{what} {path} cannot be created: {ancestor} is not writable: choose a writable directory")


def check_output_dir(path: Path, what: str = "output") -> None:
    """Refuse ``path`` as an output directory unless it is an existing directory or can be
    created as one (its nearest existing ancestor a writable directory). Creates nothing.

    Raises:
        ConfigurationError: ``path`` exists and is not a directory (a file, a device, a
            FIFO, a symbolic link...), or cannot be created (exit 2).
    """
    path = Path(os.path.abspath(path))
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: an ancestor is a file
        _creatable_parent(path, what)
        return
    except OSError as e:
        raise ConfigurationError(f"{what} {path} cannot be used: {e.strerror or e}: {_FIX}") from None
    if stat.S_ISLNK(mode) and os.path.isdir(path):
        return  # a link to a directory (e.g. runs -> /data/runs) writes into that directory
    if not stat.S_ISDIR(mode):
        raise ConfigurationError(f"{what} {path} is {_kind(mode)}, not a directory: nothing is written over it; {_FIX}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigurationError(f"{what} {path} is not writable: choose a writable directory")


def check_output_file(path: Path, what: str, suffix: str) -> Path:
    """The file an output named ``path`` is written to: ``path/<default>`` is the caller's
    business for a directory; here ``path`` names a file ending ``suffix``, which may exist
    only as a regular file (an earlier output of the same command). Creates nothing.

    Raises:
        ConfigurationError: ``path`` exists and is a device, FIFO, socket, symbolic link,
            or a file without ``suffix``; or its directory cannot be created (exit 2).
    """
    path = Path(os.path.abspath(path))
    try:
        mode: int | None = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as e:
        raise ConfigurationError(f"{what} {path} cannot be used: {e.strerror or e}: {_FIX}") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise ConfigurationError(f"{what} {path} is {_kind(mode)}: nothing is written over it; "
                                 f"pass a directory, or a new file name ending in {suffix}")
    if path.suffix.lower() != suffix:
        problem = f"is a file not ending in {suffix}: nothing is written over it" if mode is not None else f"does not end in {suffix}"
        raise ConfigurationError(f"{what} {path} {problem}; pass a directory, or a file name ending in {suffix}")
    check_output_dir(path.parent, what)
    return path
