"""Small file-system helpers shared by the package."""
import contextlib
import os

__all__ = ["atomic_output"]


@contextlib.contextmanager
def atomic_output(path, suffix=""):
    """Yield a temporary path in ``path``'s folder; on success it is renamed to ``path``, on any error removed.

    A reader, or a run killed mid-write, never sees a half-written file. ``suffix`` is kept at the end of
    the temporary name for writers that append an extension themselves (MindSpore adds ".ckpt" / ".mindir"
    to names without it). The temporary name starts with a dot and carries the writer's process id.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
