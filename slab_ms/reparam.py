"""Deploy form: every RepBN / PRepBN folded into the Dense or Conv next to it (paper Sec. 4.1).

In evaluation a PRepBN is pure RepBN, and RepBN is a fixed per-channel affine map (Lemma 4.1:
RepBN(x; μ, σ, α, β) = BN(x; μ, σ, α + ησ, β + ημ)):

    RepBN(x) = a ⊙ x + b,   a = α/σ + η,   b = β − αμ/σ,

which folds exactly into the Dense or Conv that reads or writes it (``slab_ms.layers.fold``), so the
deployed network computes no normalization at all. Each family registers, per cell type, which norm
folds where; this walker imports no family and calls what was registered.

A LayerNorm (the ``norm="ln"`` baseline) normalises with per-token statistics and has no fixed map:
it stays, and so does any norm whose owner has no fold. Both are logged and listed by
``remaining_norms``, never skipped silently.

A model trained under mixed precision (MindSpore's or MindCV's AMP wrappers, ``to_float(float16)``) is folded
in float32: the deploy form is a plain float32 network without wrappers (``slab_ms.layers.amp.strip_amp``).
"""
import copy
import logging

import mindspore as ms
from mindspore import nn

from .layers.amp import cells_and_names_through_amp, is_amp, strip_amp, unwrap_amp
from .layers.fold import registered_fold
from .layers.norm import PRepBN, RMSNorm, TokenBatchNorm, prepbn_layers
from .layers.prepbn_schedule import PRepBNSchedule

__all__ = ["reparameterize_model", "remaining_norms"]

_logger = logging.getLogger(__name__)

# Cells that compute a normalization (RepBN is a TokenBatchNorm); none should be left after folding.
NORM_CELLS = (nn.LayerNorm, RMSNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d,
              TokenBatchNorm, PRepBN)


def reparameterize_model(net, inplace=False):
    """The deploy form of ``net``: same eval outputs, every foldable norm folded, in eval state.

    Works on a deep copy of ``net`` (the training form is left as it is) unless ``inplace``. A model whose
    γ schedule is unfinished (γ > 0) is folded as the pure RepBN it evaluates as, with a warning. Norms
    that cannot be folded are logged as a warning; ``remaining_norms(deploy)`` lists them. The
    deploy form's ``forward_features`` returns the tokens *before* the final norm (it lives in the
    head now); use the training form for features. A network under AMP is folded in float32 and its deploy
    form computes in float32 (``deploy.to_float(mindspore.float16)`` asks for float16).
    """
    net = unwrap_amp(net)
    PRepBNSchedule.warn_if_unfinished(net, "folding")
    mixed_precision = is_amp(net)
    deploy = strip_amp(net if inplace else copy.deepcopy(net))
    deploy.set_train(False)
    for _, cell in list(deploy.cells_and_names()):
        fold = registered_fold(cell)
        if fold is not None:
            fold(cell)
    if mixed_precision:
        deploy.to_float(ms.float32)  # also the cells the folds created
    if not prepbn_layers(deploy):
        PRepBNSchedule.detach(deploy)  # the γ schedule has no reader left
    for name, param in deploy.parameters_and_names():
        param.name = name  # Dense cells that gained a bias were built with short names
    left = remaining_norms(deploy)
    if left:
        _logger.warning("%s: %d norm cell(s) not folded:\n  %s", type(net).__name__, len(left), "\n  ".join(
            f"{name} ({kind}): {reason}" for name, kind, reason in left))
    return deploy


def remaining_norms(net):
    """``[(name, type, reason)]`` for every normalization cell in ``net`` (outermost only; AMP wrappers seen
    through)."""
    cells = dict(cells_and_names_through_amp(net))
    found = []
    for name, cell in cells.items():
        if not isinstance(cell, NORM_CELLS) or any(name.startswith(outer + ".") for outer, _, _ in found):
            continue
        if isinstance(cell, (nn.LayerNorm, RMSNorm)):
            reason = f"{type(cell).__name__} uses per-token statistics: no fixed affine map to fold"
        else:
            owner = cells.get(name.rpartition(".")[0], net)
            reason = f"no fold registered for its owner {type(owner).__name__}"
        found.append((name, type(cell).__name__, reason))
    return found
