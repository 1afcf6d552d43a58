"""Writing a file so that a crash, a full disk or a kill never leaves half of it, nor a stray temporary; and
reading JSON so that every flaw of a file is a ValueError."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path``: a uniquely named temporary file beside it, fsynced, then renamed over it.

    The rename is atomic, so readers see the old file or the new one. The temporary's name is fresh (a
    user's ``PATH.tmp`` is never touched) and it is removed if anything fails before the rename. A pipe or
    character device (``/dev/null``, ``/dev/stdout``, a FIFO) is written into, not replaced.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def loads_json(text: str | bytes):
    """``json.loads``, except that JSON nested deeper than the parser's stack (``"[" * 100000``) is a
    ValueError like any other bad JSON, not a RecursionError, which no loader's ``except ValueError`` caught:
    a traceback where every other damaged file is a one-line error."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def current_umask() -> int:
    """The process's umask (reading it means setting it: it is put straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def check_writable(path: str | os.PathLike) -> None:
    """Raise now the OSError that writing ``path`` later would raise (naming ``path``), so that a command
    refuses an output it cannot write before its long work, not after. Leaves nothing behind: the probe is
    an anonymous temporary file in the directory that would hold ``path`` (or its nearest existing parent,
    which the write would create the rest under)."""
    path = Path(path).absolute()
    if _is_stream(path):  # written into, not beside (see atomic_path)
        if not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return
    directory = path.parent
    while not directory.exists():
        directory = directory.parent
    try:
        if not directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """``with atomic_path(path) as tmp:`` write the file at ``tmp`` (a fresh name beside ``path``); when the
    block ends without an error it is fsynced and renamed over ``path``, else removed.

    For writers that want a file name rather than bytes (``safetensors.numpy.save_file`` streams a model
    out without a second copy in memory). Nest two to replace a pair of files only once both are written.

    A pipe or character device (``/dev/null``, ``/dev/stdout``, a FIFO) is not a file to replace: renaming a
    file over it would swap the device for a regular file (as root, ``/dev/null`` for every process), so
    ``tmp`` is the path itself and the writer writes into it.
    """
    path = Path(path)
    if _is_stream(path):
        yield str(path)
        return
    if not path.parent.exists():  # (a parent that is a file fails below, as "Not a directory")
        path.parent.mkdir(parents=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # (the error names the file asked for, not a temporary the caller never saw)
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp's file is owner-only (0600); the result gets the mode a plain open() would give it
        # (0666 less the umask), or keeps the mode of the file it replaces
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _is_stream(path: Path) -> bool:
    """Whether ``path`` is written into, not replaced: a FIFO or a character device (followed through links),
    or any file named in /dev or /proc. ``/dev/stdout`` or ``/dev/fd/N`` redirected to a regular file
    (``--output /dev/stdout > plot.png``) is a link to the descriptor: a rename replaced the link (as root,
    /dev/stdout for every process), or failed in /proc ("No such file or directory: /dev/fd/3")."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return True
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    return folder == "/dev" or folder.startswith("/proc/")


_LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


def unreadable_weights(path: str | os.PathLike, reason) -> str:
    """The one-line error for a weights file that would not read: ``cannot read PATH: reason``, or, when the
    file is a Git LFS pointer, what it is and how to get the weights.

    A model repository cloned without Git LFS (``git clone https://huggingface.co/gpt2`` with git-lfs not
    installed, or ``GIT_LFS_SKIP_SMUDGE=1``) holds, in place of each weights file, a text file of three
    lines naming it: the readers' own complaint ("header too large", "invalid load key, 'v'") says nothing
    of that.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(200)
    except OSError:
        head = b""
    if not head.startswith(_LFS_POINTER):
        return f"cannot read {path}: {reason}"
    size = next((line.split()[1] for line in head.decode("ascii", "replace").splitlines()[1:]
                 if line.startswith("size ") and line.split()[1:2] and line.split()[1].isdigit()), None)
    what = f"the {int(size):,}-byte file" if size else "the file"
    return (f"cannot read {path}: it is a Git LFS pointer, not the weights ({what} was not downloaded): run "
            "`git lfs pull` in its repository, or download the file itself")
