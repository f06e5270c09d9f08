"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import os


def write_atomically(path: str, text: str, mode: int) -> None:
    """Replace ``path`` with ``text``: a reader sees the old file or the whole new one.

    A temporary file in the same directory, fsync, then rename; on any failure the
    temporary file is removed and ``path`` is left as it was.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
