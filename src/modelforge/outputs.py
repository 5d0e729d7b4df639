"""Laying a build's outputs out where people use them (dist/): store objects placed as reflinks,
copies or read-only hard links (place_output, link_or_copy), and a finished directory swapped into
place atomically (swap_into_place). Imports only the standard library.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@functools.lru_cache(maxsize=1)
def _renameat2():
    import ctypes

    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def _exchange(first: Path, second: Path) -> bool | None:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE): True if swapped, False if
    second does not exist, None where the system cannot."""
    import ctypes

    function = _renameat2()
    if function is None:
        return None
    at_cwd, rename_exchange = -100, 2
    if function(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.ENOENT:
        return False
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return None
    raise OSError(code, os.strerror(code), str(second))


def swap_into_place(new: Path, destination: Path) -> None:
    """Put directory `new` at `destination` in one rename; what was there ends up at `new` (the
    caller removes it). Readers, and a crash at any moment, see the old complete tree or the new
    one: never neither, never a mix."""
    for _ in range(3):  # a concurrent build may create or swap destination between two calls
        try:
            os.rename(new, destination)  # nothing there (or an empty directory)
            return
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
        swapped = _exchange(new, destination)
        if swapped:
            return
        if swapped is None:
            # No atomic exchange here (not Linux ≥ 3.15): two renames, with a moment without destination.
            aside = new.with_name(new.name + ".old")
            os.rename(destination, aside)
            os.rename(new, destination)
            os.rename(aside, new)
            return
    raise OSError(errno.EBUSY, "another build keeps replacing it", str(destination))


# ------------------------------------------------------------------------------ materializing outputs
# What lands in dist/ is for deploying (copied to a web root, served by an unprivileged user) and
# for people to open: it must be readable by all and must never be a way to change a store object.
# A file is therefore a reflink (copy-on-write: no bytes copied, an edit touches only the copy)
# where the filesystem can make one, else a plain copy when it is smaller than LINK_FROM, else a hard
# link to the read-only (0444) object: copying gigabytes of weights on every build is what the
# store exists to avoid, and a weight file is not something one edits.
LINK_FROM = 64 << 20
OUTPUT_DIR_MODE = 0o755
OUTPUT_FILE_MODE = 0o644
OBJECT_MODE = 0o444
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


@dataclass(frozen=True)
class Materialized:
    """How one output file was laid out: 'reflink', 'copy' or 'link' (a hard link to the store)."""

    relative: str
    how: str
    size: int


def place_output(source: Path, destination: Path, link_from: int = LINK_FROM) -> str:
    """Lay out store object `source` at `destination` (see above); returns 'reflink', 'copy' or
    'link'. A copy or reflink is mode 0644; a hard link shares the object's 0444."""
    destination.parent.mkdir(parents=True, exist_ok=True, mode=OUTPUT_DIR_MODE)
    size = source.stat().st_size
    with open(source, "rb") as reader:
        descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OUTPUT_FILE_MODE)
        try:
            try:
                fcntl.ioctl(descriptor, _FICLONE, reader.fileno())
                how = "reflink"
            except OSError:
                how = "copy" if size < link_from else "link"
                if how == "copy":
                    _copy_range(reader.fileno(), descriptor, size)
            if how != "link":
                os.fchmod(descriptor, OUTPUT_FILE_MODE)  # whatever the umask said
        finally:
            os.close(descriptor)
    if how == "link":
        os.unlink(destination)
        try:
            os.link(source, destination)
        except OSError:
            # A filesystem without hard links (or another device): a copy is the only way left.
            with open(source, "rb") as reader:
                descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OUTPUT_FILE_MODE)
                try:
                    _copy_range(reader.fileno(), descriptor, size)
                    os.fchmod(descriptor, OUTPUT_FILE_MODE)
                finally:
                    os.close(descriptor)
            how = "copy"
    return how


def _copy_range(source: int, destination: int, size: int) -> None:
    """copy_file_range (in-kernel, and a reflink on filesystems that make one), else read/write."""
    done = 0
    try:
        while done < size:
            moved = os.copy_file_range(source, destination, size - done)
            if moved == 0:
                break
            done += moved
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
            raise
    os.lseek(source, done, os.SEEK_SET)
    os.lseek(destination, done, os.SEEK_SET)
    while chunk := os.read(source, 1 << 20):
        os.write(destination, chunk)


def link_or_copy(source: Path, destination: Path) -> None:
    """Hard-link a store object to an output path; copy where the filesystem will not link."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)
