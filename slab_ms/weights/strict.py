"""What every strict loader shares: which names a caller leaves out, the one mismatch message, position tables
resized to the model's grids, the quiet load."""
import logging
import math
import re

import numpy as np
import mindspore as ms

__all__ = ["is_excluded", "mismatch_message", "backbone_view", "resize_position_tables", "load_checked"]

_logger = logging.getLogger(__name__)
# Tables laid out on a square grid of tokens or of relative offsets, whose size follows the input size or window:
# (1, [prefix tokens +] S·S, C) position embeddings and SLA positional encodings, (S·S, heads) relative biases.
POSITION_TABLE = re.compile(
    r"(^|\.)(pos_embed\d*|absolute_pos_embed|positional_encoding|relative_position_bias_table)$")

# A classifier's parts that a backbone (``features_only=True``) does not have, and the backbone's own.
CLASSIFIER_CELLS = ("head", "norm")
OUTPUT_NORMS = "out_norms"


def is_excluded(name, exclude):
    """True when the parameter ``name`` lies under one of the cell names in ``exclude`` (e.g. "head")."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in exclude)


def backbone_view(net, keys, exclude):
    """``(keys to skip, exclude)`` for loading a checkpoint into ``net``. For a backbone the checkpoint may be a
    classifier's (e.g. ImageNet weights, as detection fine-tuning starts from): its head and final norm (also
    under an ``ema.`` / optimizer-slot prefix) are skipped, and without output norms in the checkpoint the
    backbone's keep their initial values. For any other model: nothing skipped, ``exclude`` unchanged."""
    if not getattr(net, "features_only", False):
        return set(), tuple(exclude)
    children = set(net.name_cells())

    def classifier_part(key):
        first, _, rest = key.partition(".")
        name = key if first in children or first in CLASSIFIER_CELLS else rest
        return name.split(".", 1)[0] in CLASSIFIER_CELLS

    skip = {k for k in keys if classifier_part(k)}
    if not any(is_excluded(k, (OUTPUT_NORMS,)) for k in keys):
        exclude = tuple(exclude) + (OUTPUT_NORMS,)
    return skip, tuple(exclude)


def mismatch_message(headline, missing, unexpected, mismatched, limit=12):
    """One error text for a checkpoint that does not fit a model: the headline, then each non-empty list."""
    def show(title, items):
        more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:limit]) + more if items else ""
    return (headline + show("missing in checkpoint", missing) + show("unexpected in checkpoint", unexpected)
            + show("shape mismatch", mismatched))


def _bicubic_matrix(src, dst, a=-0.75):
    """(dst, src) weights of a 1-D bicubic resize as torch's ``interpolate(mode="bicubic", align_corners=False)``:
    Keys' kernel with a = -0.75, half-pixel centres, border samples repeated."""
    weights = np.zeros((dst, src))
    for i in range(dst):
        x = (i + 0.5) * src / dst - 0.5
        left = math.floor(x)
        for k in range(-1, 3):
            d = abs(x - (left + k))
            w = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((d - 5) * d + 8) * d * a - 4 * a
            weights[i, min(max(left + k, 0), src - 1)] += w
    return weights


def _square_side(n):
    side = math.isqrt(n) if n > 0 else 0
    return side if side * side == n else None


def resize_position_tables(values, shapes):
    """``values`` (name -> array) with each position table (:data:`POSITION_TABLE`) whose grid differs from the
    model's (``shapes``: name -> shape) resized bicubically, as the reference's fine-tuning does (leading prefix
    tokens such as a class token are kept). Logs one line naming what was resized; other mismatches are left to
    the caller's error."""
    values, resized = dict(values), []
    for name, target in shapes.items():
        value = values.get(name)
        if value is None or not POSITION_TABLE.search(name) or tuple(value.shape) == tuple(target):
            continue
        value = np.asarray(value.asnumpy() if isinstance(value, ms.Tensor) else value)
        if value.ndim == 2 and len(target) == 2 and value.shape[1] == target[1]:  # relative bias (S·S, heads)
            prefix, tokens, channels = 0, value, value.shape[1]
        elif value.ndim == 3 and len(target) == 3 and value.shape[0] == target[0] == 1 and value.shape[2] == target[2]:
            prefix = next((p for p in (0, 1) if _square_side(value.shape[1] - p) and _square_side(target[1] - p)), None)
            if prefix is None:
                continue
            tokens, channels = value[0], value.shape[2]
        else:
            continue
        src, dst = _square_side(tokens.shape[0] - prefix), _square_side(target[-2] - prefix)
        if not src or not dst:
            continue
        rows, cols = _bicubic_matrix(src, dst), _bicubic_matrix(src, dst)
        grid = np.einsum("ih,hwc,jw->ijc", rows, tokens[prefix:].reshape(src, src, channels).astype(np.float64), cols)
        table = np.concatenate([tokens[:prefix], grid.reshape(dst * dst, channels).astype(tokens.dtype)])
        values[name] = table.reshape(target)
        resized.append(f"{name} {src}x{src} -> {dst}x{dst}")
    if resized:
        more = f" ... (+{len(resized) - 6} more)" if len(resized) > 6 else ""
        _logger.warning("resized %d position table(s) to this model's grids (bicubic, as the reference's "
                        "fine-tuning): %s%s", len(resized), ", ".join(resized[:6]), more)
    return values


def load_checked(net, values):
    """Load ``values`` (parameter name -> Parameter), already checked against ``net`` by the caller, with
    MindSpore's strict dtype and shape checks. The parameters the caller leaves out on purpose (the γ schedule it
    sets itself, excluded cells) are passed at their current values, so MindSpore reports none as "not loaded"."""
    full = {param.name: param for _, param in net.parameters_and_names()}
    full.update(values)
    ms.load_param_into_net(net, full, strict_load=True)
    return net
