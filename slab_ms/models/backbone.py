"""Detection / segmentation backbones: the ``features_only`` form every family shares.

``create_model(name, features_only=True, out_indices=(0, 1, 2, 3))`` builds a family's model without its
head and final norm; it returns one ``(B, C_i, H_i, W_i)`` map per out index, each after its own output norm
(the official detection backbones put a norm after every output stage). ``feature_info`` describes the outputs
as MindCV's and timm's feature wrappers do (``chs``, ``reduction``, ``index``, ``name``).

The output norms are built with the model's own norm layer (PRepBN / RepBN / BN / LN), so in the deploy form
they are exact per-channel affine maps (``ChannelAffine``), which a neck's first 1×1 conv can absorb. The
official Swin detection backbones use LayerNorm there (``out_norm="ln"``, which cannot fold); the official PVT v1
detection backbone returns the stage maps without a norm (``out_norm="none"``).

The six backbone kwargs of every family constructor and factory are declared once, in :class:`BackboneOptions`:
``features_only``, ``out_indices`` (an int or a sequence, negative from the end; default every stage, or the
family's choice), ``out_norm`` (above) and the fine-tuning modes (with ``features_only=True``):

* ``frozen_stages=k``: the patch embedding and the first ``k`` stages (0: the patch embedding only, -1:
  nothing) get ``requires_grad=False`` and stay in evaluation mode whatever ``set_train`` says (as
  mmdetection's ``_freeze_stages``); their PRepBN layers then compute pure RepBN.
* ``norm_eval=True``: every BatchNorm (the BN side of each RepBN / PRepBN) uses and keeps its running
  statistics while the rest trains; its affine weights, RepBN's η and the γ schedule still train and advance
  (the official detection backbones put every BatchNorm1d in eval mode in ``train()``).
* ``freeze_eta=True``: RepBN's η (``alpha``) gets ``requires_grad=False``.
"""
import dataclasses

from mindspore import nn, ops

from ..layers import check_input, dense, get_norm_layer
from ..layers.amp import unwrap_amp
from ..layers.fold import fold_final_norm, keep_as_affine
from ..layers.norm import RepBN, TokenBatchNorm
from ..layers.prepbn_schedule import advance_in_training

__all__ = ["BackboneMixin", "BackboneOptions", "tokens_to_map", "pad_grid", "crop_tokens", "fold_output_norms",
           "fold_head_or_output_norms"]


def tokens_to_map(x, hw):
    """(B, H·W, C) row-major tokens -> (B, C, H, W)."""
    b, _, c = x.shape
    return x.transpose(0, 2, 1).reshape(b, c, hw[0], hw[1])


def pad_grid(x, hw, multiple, value=None):
    """(B, H, W, C) padded at the bottom / right to multiples of ``multiple`` with ``value`` (C,) (zeros if None);
    returns the map and its padded grid."""
    h, w = hw
    hp, wp = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    if (hp, wp) == (h, w):
        return x, (hp, wp)
    if value is None:
        return ops.pad(x, (0, 0, 0, wp - w, 0, hp - h)), (hp, wp)
    return ops.pad(x - value, (0, 0, 0, wp - w, 0, hp - h)) + value, (hp, wp)


def crop_tokens(x, padded_hw, hw):
    """(B, Hp·Wp, C) tokens of a padded grid -> the (B, H·W, C) tokens of its top-left ``hw`` part."""
    if tuple(padded_hw) == tuple(hw):
        return x
    b, _, c = x.shape
    return x.reshape(b, padded_hw[0], padded_hw[1], c)[:, :hw[0], :hw[1]].reshape(b, hw[0] * hw[1], c)


def _no_norm(dim):  # pylint: disable=unused-argument
    return nn.Identity()


def _check_index(value, count, what):
    if not isinstance(value, int) or isinstance(value, bool) or not -count <= value < count:
        raise ValueError(f"out_indices: {value!r} is not a {what} index of this model (0 ... {count - 1}, or "
                         f"negative from the end).")
    return value % count


@dataclasses.dataclass(frozen=True)
class BackboneOptions:
    """The backbone kwargs every family constructor takes as ``**backbone`` (their meaning: the module doc)."""
    features_only: bool = False
    out_indices: object = None
    frozen_stages: int = -1
    norm_eval: bool = False
    freeze_eta: bool = False
    out_norm: str = None

    def __post_init__(self):
        if not self.features_only and (self.out_indices is not None or self.frozen_stages != -1 or self.norm_eval
                                       or self.freeze_eta or self.out_norm is not None):
            raise ValueError("out_indices, frozen_stages, norm_eval, freeze_eta and out_norm are backbone "
                             "options: pass features_only=True with them.")

    @classmethod
    def names(cls):
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def of(cls, owner, kwargs):
        """The options in a constructor's ``**kwargs``; any other key is a TypeError naming ``owner``."""
        unknown = sorted(set(kwargs) - set(cls.names()))
        if unknown:
            raise TypeError(f"{type(owner).__name__}.__init__() got unexpected keyword argument(s) "
                            f"{', '.join(unknown)}")
        return cls(**kwargs)


class BackboneMixin:
    """Classifier and features-only form of a family model (mixed into its ``nn.Cell`` class before ``nn.Cell``).

    The family's constructor takes the backbone kwargs as ``**backbone`` (:class:`BackboneOptions`), sets
    ``num_features`` and ``num_classes`` and calls ``_init_backbone`` at the end (before
    ``attach_prepbn_schedule``); it provides ``forward_features`` (image -> final tokens) and ``forward_stages``
    (image -> ``((tokens (B, N, C), (H, W)), ...)`` up to a last stage). ``construct`` and ``forward_head``
    (mean of the tokens, or the class token when ``global_pool`` is "token") are this class's.
    """
    keyword_options = BackboneOptions.names()  # what a family's **backbone takes (registry.check_kwargs)
    global_pool = "avg"

    def _init_backbone(self, backbone, stages, groups, norm_layer, *, final_norm=True, default_out=None,
                       what="stage", ln_eps=1e-6):
        """The classifier's final norm (``final_norm``; not in the backbone form) and head, then the backbone
        form: ``backbone`` the constructor's ``**backbone`` kwargs; ``stages``: one ``dict(chs, reduction, name)``
        per output position; ``groups``: the cell / Parameter attribute names of the patch embedding
        (``groups[0]``) and of each stage (``groups[1:]``), for ``frozen_stages``; ``default_out``: the outputs
        without ``out_indices`` (default: every stage); ``what``: what the family calls a stage."""
        options = BackboneOptions.of(self, backbone)
        self.features_only = bool(options.features_only)
        if final_norm and not self.features_only:
            self.norm = norm_layer(self.num_features)
        has_head = self.num_classes > 0 and not self.features_only
        self.head = dense(self.num_features, self.num_classes) if has_head else nn.Identity()
        self.frozen_stages = int(options.frozen_stages)
        self.norm_eval, self.freeze_eta = bool(options.norm_eval), bool(options.freeze_eta)
        if not self.features_only:
            self.out_indices = ()
            return
        out_indices, frozen_stages, out_norm = options.out_indices, options.frozen_stages, options.out_norm
        count = len(stages)
        if out_indices is None:
            out_indices = default_out if default_out is not None else tuple(range(count))
        out_indices = (out_indices,) if isinstance(out_indices, int) else tuple(out_indices)
        if not out_indices:
            raise ValueError("out_indices is empty: name at least one output.")
        self.out_indices = tuple(_check_index(i, count, what) for i in out_indices)
        if len(set(self.out_indices)) != len(self.out_indices):
            raise ValueError(f"out_indices {out_indices} names an output twice.")
        if not -1 <= self.frozen_stages < len(groups):
            raise ValueError(f"frozen_stages must be -1 (nothing), 0 (the patch embedding) ... {len(groups) - 1} "
                             f"(every {what}), got {frozen_stages}.")
        self.feature_info = [dict(stages[i], index=i) for i in self.out_indices]
        if out_norm == "none":
            out_layer = _no_norm
        else:
            out_layer = norm_layer if out_norm is None else get_norm_layer(out_norm, ln_eps=ln_eps)
        self.out_norms = nn.CellList([out_layer(stages[i]["chs"]) for i in self.out_indices])
        self._frozen_names = [name for group in groups[:self.frozen_stages + 1] for name in group]
        self._apply_backbone_modes()

    def construct(self, x):
        """Logits, or (``features_only``) the selected stage maps; in training, one γ step when the schedule is the
        model's own (:func:`~slab_ms.layers.prepbn_schedule.advance_in_training`)."""
        if self.features_only:
            check_input(x, self.in_channels, 1, type(self).__name__)
            out = self._outputs(self.forward_stages(x, self.last_stage))
        else:
            out = self.forward_head(self.forward_features(x))
        advance_in_training(self)
        return out

    def forward_head(self, x, pre_logits=False):
        """Final tokens (B, N, C) -> logits (or the pooled features with ``pre_logits``)."""
        x = x[:, 0] if self.global_pool == "token" else x.mean(axis=1)
        return x if pre_logits else self.head(x)

    @property
    def out_channels(self):
        """Channels of each output (MindCV's ``FeatureExtractWrapper.out_channels``)."""
        return [info["chs"] for info in self.feature_info]

    @property
    def last_stage(self):
        """The last stage an output needs (the stages after it are skipped)."""
        return max(self.out_indices)

    def _outputs(self, stages):
        """The selected stage tokens, each through its output norm, as (B, C, H, W) maps."""
        outs = ()
        for j, norm in enumerate(self.out_norms):
            tokens, hw = stages[self.out_indices[j]]
            outs = outs + (tokens_to_map(norm(tokens), hw),)
        return outs

    def _frozen_cells_and_params(self):
        """The cells (dotted names) and model-level Parameters (attribute names) that ``frozen_stages`` freezes."""
        named = dict(self.cells_and_names())
        cells, params = [], []
        for name in self._frozen_names:
            if name in named:
                cells.append(named[name])
                params.extend(named[name].get_parameters())
            else:
                params.append(getattr(self, name))
        return cells, params

    def _apply_backbone_modes(self):
        if not getattr(self, "features_only", False):
            return
        cells, params = self._frozen_cells_and_params()
        for param in params:
            param.requires_grad = False
        for cell in cells:
            cell.add_flags_recursive(training=False)
        for _, cell in self.cells_and_names():
            if self.norm_eval and isinstance(cell, TokenBatchNorm):
                unwrap_amp(cell.bn).use_batch_statistics = False
            if self.freeze_eta and isinstance(cell, RepBN):
                cell.alpha.requires_grad = False

    def add_flags_recursive(self, **flags):
        """``set_train`` of this model or of any cell around it: frozen stages stay in evaluation mode."""
        super().add_flags_recursive(**flags)
        if flags.get("training"):
            self._apply_backbone_modes()
        return self


def fold_output_norms(model):
    """Deploy form of the output norms: each becomes its exact eval map (the stage output is a residual sum,
    nothing inside the backbone can absorb it)."""
    for j in range(len(model.out_norms)):
        keep_as_affine(model.out_norms, str(j))


def fold_head_or_output_norms(model):
    """The model-level fold of a family with a final norm: final norm → head (classifier), or the backbone's
    output norms → their eval maps."""
    if model.features_only:
        fold_output_norms(model)
    else:
        fold_final_norm(model)
