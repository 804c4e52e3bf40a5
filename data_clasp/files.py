"""Writing a file whole: readers never see half of it, and a failed write leaves nothing behind."""

import os


def write_atomically(path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8, or bytes) to `path`: into `PATH.tmpPID` beside it, then renamed
    over `path` (os.replace, atomic on one file system). Parent folders are created.

    Raises OSError naming `path` when it cannot be written (a full disk, no permission); the
    temporary file is removed whatever stops the write, a KeyboardInterrupt included.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as f:  # a full disk raises here or at close, before the rename
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException as error:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise OSError(f"{path}: could not be written ({error})") from error
        raise
