"""Small file-system helpers shared by the package: atomic outputs with the usual file mode, their stale
temporaries, a writable-folder check, the run lock of a checkpoint folder, and fresh default output names."""
import contextlib
import datetime
import errno
import fcntl
import os
import re

__all__ = ["atomic_output", "save_figure", "default_file_mode", "remove_stale_temporaries", "check_writable_folder", "RunLock",
           "FolderInUseError", "new_run_folder", "first_free_path"]

# The temporary names atomic_output writes, ".<name>.tmp<pid><suffix>", and the ".<name>.tmp<pid>.tmp" that
# MindSpore's checkpoint writer makes of one ending in ".ckpt" while it writes.
_TEMPORARY = re.compile(r"^\..+\.tmp(?P<pid>\d+)(\.[A-Za-z0-9]+)?$")


def default_file_mode():
    """The mode a new file gets from ``open()`` under this process's umask (0644 under the usual 022)."""
    try:  # Linux >= 4.7; unlike os.umask it does not change the umask for a moment under other threads
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path, suffix=""):
    """Yield a temporary path in ``path``'s folder; on success it is renamed to ``path``, on any error removed.

    A reader, or a run killed mid-write, never sees a half-written file. ``suffix`` is kept at the end of
    the temporary name for writers that append an extension themselves (MindSpore adds ".ckpt" / ".mindir"
    to names without it). The temporary name starts with a dot and carries the writer's process id
    (:func:`remove_stale_temporaries` removes those of dead processes). The file gets the usual mode of a
    new file (:func:`default_file_mode`): MindSpore's writers leave their files owner-read-only (0400).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        # MindSpore's checkpoint writer first writes "<name without .ckpt>.tmp" itself, then renames it
        for leftover in (tmp, tmp[:-len(suffix)] + ".tmp" if suffix else None):
            if leftover and os.path.exists(leftover):
                os.remove(leftover)

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
    probe = os.path.join(folder, f".write_probe.tmp{os.getpid()}")
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
    holder's pid (written into the file). The file itself is never removed: removing it while another
    process waits on it would let two runs hold "the" lock at once.
    """

    NAME = ".slab_train.lock"

    def __init__(self, folder):
        self.path = os.path.join(os.fspath(folder), self.NAME)
        self.fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            raise FolderInUseError(f"'{os.path.dirname(self.path)}' is in use by another run (pid {holder}, lock "
                                   f"{self.path}); wait for it to finish or choose another --ckpt_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

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
