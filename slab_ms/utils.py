"""Small utilities shared by the scripts."""
import os

import mindspore as ms

__all__ = ["save_checkpoint_atomic", "mismatch_message"]


def save_checkpoint_atomic(save_obj, path, append_dict=None):
    """``mindspore.save_checkpoint`` to a temporary file in the same folder, then rename: a reader (or a
    killed run) never sees a half-written checkpoint."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # MindSpore appends ".ckpt" to names without it, so the temporary name keeps the suffix.
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}.ckpt")
    try:
        ms.save_checkpoint(save_obj, tmp, append_dict=append_dict)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def mismatch_message(headline, missing, unexpected, mismatched, limit=12):
    """One error text for a checkpoint that does not fit a model: the headline, then each non-empty list."""
    def show(title, items):
        more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:limit]) + more if items else ""
    return (headline + show("missing in checkpoint", missing) + show("unexpected in checkpoint", unexpected)
            + show("shape mismatch", mismatched))
