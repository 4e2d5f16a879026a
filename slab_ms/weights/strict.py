"""What every strict loader shares: which names a caller leaves out, the one mismatch message, the quiet load."""
import mindspore as ms

__all__ = ["is_excluded", "mismatch_message", "backbone_view", "load_checked"]

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


def load_checked(net, values):
    """Load ``values`` (parameter name -> Parameter), already checked against ``net`` by the caller, with
    MindSpore's strict dtype and shape checks. The parameters the caller leaves out on purpose (the γ schedule it
    sets itself, excluded cells) are passed at their current values, so MindSpore reports none as "not loaded"."""
    full = {param.name: param for _, param in net.parameters_and_names()}
    full.update(values)
    ms.load_param_into_net(net, full, strict_load=True)
    return net
