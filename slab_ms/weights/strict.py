"""What every strict loader shares: which names a caller leaves out, and the one mismatch message."""

__all__ = ["is_excluded", "mismatch_message"]


def is_excluded(name, exclude):
    """True when the parameter ``name`` lies under one of the cell names in ``exclude`` (e.g. "head")."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in exclude)


def mismatch_message(headline, missing, unexpected, mismatched, limit=12):
    """One error text for a checkpoint that does not fit a model: the headline, then each non-empty list."""
    def show(title, items):
        more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:limit]) + more if items else ""
    return (headline + show("missing in checkpoint", missing) + show("unexpected in checkpoint", unexpected)
            + show("shape mismatch", mismatched))
