"""Small file-system helpers shared by the package: atomic outputs with the usual file mode, their stale
temporaries, a writable-folder check, the run lock of a checkpoint folder, and fresh default output names."""
import contextlib
import datetime
import errno
import fcntl
import os
import re

__all__ = ["atomic_output", "save_figure", "default_file_mode", "remove_stale_temporaries", "check_writable_folder",
           "check_output_name", "refuse_existing", "reporting_disk_full", "OutputError", "RunLock", "FolderInUseError",
           "new_run_folder", "first_free_path"]

# Every temporary this package writes carries this marker (".<name>.slabtmp<pid><suffix>"), so cleanup never
# touches a file of another program; the regex also matches the ".<name>.slabtmp<pid>.tmp" that MindSpore's
# checkpoint writer makes of one ending in ".ckpt" while it writes.
TEMPORARY_MARKER = ".slabtmp"
_TEMPORARY = re.compile(r"^\..+\.slabtmp(?P<pid>\d+)(\.[A-Za-z0-9]+)?$")
_PID_DIGITS = 7  # Linux's largest pid_max, 4194304
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class OutputError(ValueError):
    """An output file cannot be written (disk full, name too long, exists): one message, exit status 2."""


def default_file_mode():
    """The mode a new file gets from ``open()`` under this process's umask (0644 under the usual 022)."""
    try:  # Linux >= 4.7; unlike os.umask it does not change the umask for a moment under other threads
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _temporary_name(name, suffix, pid):
    return f".{name}{TEMPORARY_MARKER}{pid}{suffix}"


def check_output_name(path, what, suffix=""):
    """Raise OutputError when ``path``'s name, or the temporary name :func:`atomic_output` first writes it
    under, is longer than its folder's file system allows (255 bytes on the usual ones)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = len(os.fsencode(_temporary_name(name, suffix, "9" * _PID_DIGITS)))
    if longest > limit:
        room = limit - (longest - len(os.fsencode(name)))
        raise OutputError(f"{what} '{name}' is {len(os.fsencode(name))} bytes long; at most {room} fit here (the file "
                          f"is first written under a temporary name {longest - len(os.fsencode(name))} bytes longer, "
                          f"names are limited to {limit} bytes). Choose a shorter name (nothing was written).")


def refuse_existing(path):
    """Raise OutputError when ``path`` exists (the tools' answer without ``--overwrite``)."""
    if os.path.lexists(path):
        raise OutputError(f"'{path}' exists; pass --overwrite to replace it, or choose another --file_name "
                          "(nothing was written)")


def _publish_new(tmp, path):
    """Give ``tmp`` the name ``path`` only if no file has it, in one step (a hard link fails on an existing
    name); on a file system without hard links, ``path`` is first created exclusively, then replaced."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        refuse_existing(path)
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        refuse_existing(path)
        raise
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_output(path, suffix="", overwrite=True):
    """Yield a temporary path in ``path``'s folder; on success it is renamed to ``path``, on any error removed.

    A reader, or a run killed mid-write, never sees a half-written file. ``suffix`` is kept at the end of
    the temporary name for writers that append an extension themselves (MindSpore adds ".ckpt" / ".mindir"
    to names without it). The temporary name starts with a dot and carries this package's marker and the
    writer's process id (:func:`remove_stale_temporaries` removes those of dead processes). The file gets the
    usual mode of a new file (:func:`default_file_mode`): MindSpore's writers leave their files
    owner-read-only (0400). ``overwrite=False`` publishes the file only if ``path`` does not exist at that
    moment (two writers of one name: one wins, the other gets OutputError). A full disk is OutputError too,
    with ``path`` left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, _temporary_name(os.path.basename(path), suffix, os.getpid()))
    try:
        with reporting_disk_full(path):
            yield tmp
            os.chmod(tmp, default_file_mode())
            if overwrite:
                os.replace(tmp, path)
            else:
                _publish_new(tmp, path)
    finally:
        # MindSpore's checkpoint writer first writes "<name without .ckpt>.tmp" itself, then renames it
        for leftover in (tmp, tmp[:-len(suffix)] + ".tmp" if suffix else None):
            if leftover and os.path.exists(leftover):
                os.remove(leftover)


@contextlib.contextmanager
def reporting_disk_full(path):
    """Turn a full disk (ENOSPC, EDQUOT) while writing ``path`` into OutputError: one message, exit status 2."""
    try:
        yield
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        raise OutputError(f"cannot write '{path}': {err.strerror or 'no space left on device'}. Free some space "
                          "(or choose another folder) and run again; the files written before are intact.") from None


def save_figure(fig, path, dpi="figure"):
    """Write a matplotlib figure as PNG atomically (``atomic_output``) and close it."""
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)



def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder):
    """Remove the :func:`atomic_output` temporaries in ``folder`` whose writer process is gone (a run killed
    mid-write); a live writer's file is left alone. Returns the removed paths."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        if not match or int(match.group("pid")) == os.getpid() or _alive(int(match.group("pid"))):
            continue
        path = os.path.join(folder, name)
        with contextlib.suppress(FileNotFoundError):
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
                removed.append(path)
    return removed


def check_writable_folder(folder, what, create=True):
    """Make sure files can be written in ``folder`` (created when ``create``) by creating and removing a probe
    file; raises ValueError naming ``what`` (e.g. "--ckpt_dir") otherwise. Returns True if it was created."""
    folder = os.fspath(folder)
    created = False
    if not os.path.isdir(folder):
        if not create:
            raise ValueError(f"{what} '{folder}' is not an existing folder")
        try:
            os.makedirs(folder)
            created = True
        except FileExistsError:
            if not os.path.isdir(folder):
                raise ValueError(f"{what} '{folder}' exists and is not a folder") from None
        except OSError as err:
            raise ValueError(f"{what} '{folder}' cannot be created: {err.strerror} "
                             f"({_blocking_part(folder)})") from None
    probe = os.path.join(folder, _temporary_name("write_probe", "", os.getpid()))
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as err:
        raise ValueError(f"{what} '{folder}' is not writable: {err.strerror}. Choose another folder or fix its "
                         "permissions (nothing was written).") from None
    return created


def _blocking_part(folder):
    """The first existing component of ``folder`` that is not a folder, or the deepest existing folder."""
    parts = os.path.abspath(folder).split(os.sep)
    for index in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:index]) or os.sep
        if os.path.exists(prefix) and not os.path.isdir(prefix):
            return f"'{prefix}' is a file"
        if not os.path.exists(prefix):
            return f"'{os.sep.join(parts[:index - 1]) or os.sep}' does not allow it"
    return "check the permissions"


class FolderInUseError(ValueError):
    """Another live process holds the run lock of a folder."""


class RunLock:
    """An exclusive OS lock (``fcntl.flock``) on ``<folder>/.slab_train.lock`` for the lifetime of a run.

    The kernel releases it when the process ends, however it ends (SIGKILL included), so a lock file left
    behind never blocks a resume; a second live run into the same folder fails at once, naming the
    holder's pid (written into the file). A lock counts only while its file is still the one at the path:
    a run that locked a file its holder has just removed (:meth:`remove_folder`) opens the path again.
    """

    NAME = ".slab_train.lock"

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, self.NAME)
        self.fd = None

    def acquire(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                    raise
                raise FolderInUseError(f"'{self.folder}' is in use by another run (pid {holder}, lock {self.path}); "
                                       "wait for it to finish or choose another --ckpt_dir") from None
            if self._is_current(fd):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def _is_current(self, fd):
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino)

    def remove_folder(self):
        """Held: remove the folder if it holds nothing but the lock file, then release (a failed start's
        cleanup of the folder it created; nothing of another run is touched)."""
        if self.fd is None:
            raise RuntimeError("remove_folder needs the lock held")
        try:
            if os.listdir(self.folder) == [self.NAME]:
                os.remove(self.path)
                os.rmdir(self.folder)
        except OSError:
            pass
        self.release()

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def new_run_folder(parent):
    """Create and return a new ``<parent>/<date-time>`` folder (``-2``, ``-3``, ... within the same second): the
    default output of a run, so running a command again never meets the files of the last run."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        candidate = os.path.join(parent, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.makedirs(candidate)
            return candidate
        except FileExistsError:
            continue
    raise ValueError(f"no free output folder name under '{parent}'; pass an output path")


def first_free_path(path):
    """``path``, or the first of ``<stem>-2<ext>``, ``<stem>-3<ext>``, ... that does not exist: a default output
    name that never replaces an earlier output."""
    stem, ext = os.path.splitext(path)
    n = 1
    while os.path.exists(path):
        n += 1
        path = f"{stem}-{n}{ext}"
    return path
