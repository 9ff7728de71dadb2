"""Writes that are complete or absent: a kill at any moment leaves the previous version whole.

Everything this library saves (backups, presets, exports, embedding caches)
is written under a temporary name next to its destination and then renamed
over it with `os.replace`, which POSIX makes atomic within one filesystem.
Folders are swapped whole: on Linux with one `renameat2(RENAME_EXCHANGE)`;
elsewhere by two renames, where a kill between them leaves the old folder
under `<name>.old-*` next to it (`replaced_folder` names it in its error).
"""

import contextlib
import ctypes
import os
import shutil
import sys
import uuid

_RENAME_EXCHANGE = 2


def _temporary_sibling(path, kind):
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's: leave it
    return True


def remove_leftovers(path):
    """Removes what killed writers of `path` left beside it: their temporary files and folders.

    A previous version set aside by the two-rename swap (`.<name>.old-*`) is
    removed only when `path` itself is in place.
    """
    folder, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(folder):
        return
    for entry in os.listdir(folder):
        kind = next((k for k in ("partial", "old") if entry.startswith(f".{name}.{k}-")), None)
        if kind is None:
            continue
        pid = entry.split("-")[-2]
        if not pid.isdigit() or _alive(int(pid)) or (kind == "old" and not os.path.exists(path)):
            continue
        leftover = os.path.join(folder, entry)
        if os.path.isdir(leftover):
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            os.remove(leftover)


def sync_file(path):
    """Flushes a written file to the disk (a kill needs no flush; a power cut does)."""
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def sync_folder(path):
    """Flushes a folder's entries (the names a rename changed) to the disk, where the OS allows it."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return  # Windows opens no folders
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _sync_tree(path):
    for root, _, files in os.walk(path):
        for name in files:
            sync_file(os.path.join(root, name))
        sync_folder(root)


@contextlib.contextmanager
def replaced_file(path):
    """Yields a temporary path to write; on success it replaces `path` in one rename.

    Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> with replaced_file(path) as temporary:
    ...     _ = open(temporary, "w").write("complete")
    >>> open(path).read()
    'complete'
    """
    remove_leftovers(path)
    temporary = _temporary_sibling(path, "partial")
    try:
        yield temporary
        sync_file(temporary)
        os.replace(temporary, path)
        sync_folder(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _exchange(a, b):
    """Swaps two paths in one step (Linux); False where the OS or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_cwd = -100
    result = renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _looks_like_a_checkpoint(folder):
    names = set(os.listdir(folder))
    return not names or "config.json" in names


@contextlib.contextmanager
def replaced_folder(path):
    """Yields a temporary sibling folder to fill; on success it takes the place of `path` whole.

    The previous folder stays complete until the new one is, and nothing of
    it is left beside the new one (no stale tokenizer next to a new model).
    An existing non-empty folder without a `config.json` is refused, so a
    mistyped path never replaces unrelated files.

    Example:
    >>> import os, tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "preset")
    >>> with replaced_folder(folder) as temporary:
    ...     _ = open(os.path.join(temporary, "config.json"), "w").write("{}")
    >>> os.listdir(folder)
    ['config.json']
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path):
        raise ValueError(f"{path} is a file; a folder is written there.")
    if os.path.isdir(path) and not _looks_like_a_checkpoint(path):
        raise ValueError(
            f"{path} holds files but no config.json: it is not a checkpoint folder, and saving replaces the "
            "whole folder. Choose an empty or new folder."
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    remove_leftovers(path)
    temporary = _temporary_sibling(path, "partial")
    os.makedirs(temporary)
    try:
        yield temporary
        _sync_tree(temporary)
        if not os.path.isdir(path):
            os.rename(temporary, path)
        elif _exchange(temporary, path):
            shutil.rmtree(temporary)  # now the previous version
        else:
            previous = _temporary_sibling(path, "old")
            os.rename(path, previous)
            try:
                os.rename(temporary, path)
            except OSError as error:
                raise OSError(f"Could not put the new {path} in place; the previous one is {previous}") from error
            shutil.rmtree(previous)
        sync_folder(os.path.dirname(path))
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
