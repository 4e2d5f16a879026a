"""The official PyTorch side of the tests: layer-by-layer parity with the outputs stored in tests/fixtures/*.npz,
the fixtures' constructor kwargs, the official parameter counts, and official state dicts (keys and random
values)."""
import json
import os

import numpy as np
import mindspore as ms

from slab_ms.weights import load_official_checkpoint
from slab_ms.layers import PRepBNSchedule
from slab_ms.models.__main__ import RELEASED

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def load_fixture(name):
    path = os.path.join(FIXTURES, name)
    assert os.path.isfile(path), f"fixture {path} is missing: tests/fixtures/README.md says how each is made"
    data = dict(np.load(path, allow_pickle=False))
    return data, json.loads(str(data["__meta__"]))


def norm_kwargs(norm_layer):
    """The fixture's symbolic ``norm_layer`` -> our ``norm=`` / ``prepbn_decay_steps`` / ``ln_eps``."""
    if norm_layer == "@models.prepbn:RepBN":
        return {"norm": "repbn"}
    if norm_layer == "@models.deit:linearnorm":  # deit.py's module-level partial: LN eps 1e-6, T = 3e5
        return {"norm": "prepbn", "prepbn_decay_steps": 300000, "ln_eps": 1e-6}
    assert norm_layer["@partial"] == "models.prepbn:LinearNorm", norm_layer
    return {"norm": "prepbn", "prepbn_decay_steps": norm_layer["step"], "ln_eps": norm_layer["norm1"]["eps"]}


def pvt_kwargs(meta):
    """A PVT fixture's official constructor kwargs -> ours (dead / fixed-value official kwargs dropped)."""
    kw = dict(meta["kwargs"])
    norm_layer = kw.pop("norm_layer")
    kw.pop("focusing_factor")  # printed, never used by the reference
    assert kw.pop("la_sr_ratios") == "1111"  # SLA at full resolution, as in every released config
    if norm_layer == "@models.slab_pvt:linearnorm":  # slab_pvt.py's module-level partial: LN eps 1e-6, T = 3e5
        return dict(kw, norm="prepbn", prepbn_decay_steps=300000, ln_eps=1e-6)
    return dict(kw, **norm_kwargs(norm_layer))


def official_params(name):
    """All ``nn.Parameter`` elements of the official PyTorch model of a released model (224², 1000 classes), from
    the one table of them: ``slab_ms.models.__main__.RELEASED``."""
    return RELEASED[name][1]


def official_norm_keys(prefix, channels, linearnorm=True):
    """Official state-dict names -> shapes of one norm of the reference: a RepBN (``alpha`` and the BatchNorm
    ``bn``) or, with ``linearnorm``, a LinearNorm (PRepBN: its counters, LayerNorm ``norm1`` and RepBN ``norm2``).
    The one builder of official keys: each family's full-size layout is written out from it in its test file,
    independently of the model code."""
    if linearnorm:
        keys = {f"{prefix}.warm": (), f"{prefix}.iter": (), f"{prefix}.total_step": (),
                f"{prefix}.norm1.weight": (channels,), f"{prefix}.norm1.bias": (channels,)}
        return dict(keys, **official_norm_keys(prefix + ".norm2", channels, linearnorm=False))
    keys = {f"{prefix}.alpha": (1,), f"{prefix}.bn.num_batches_tracked": ()}
    keys.update({f"{prefix}.bn.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")})
    return keys


def official_layer_keys(prefix, *weight_shape):
    """``prefix.weight`` of ``weight_shape`` and ``prefix.bias`` of its first dimension (a Linear or a Conv)."""
    return {f"{prefix}.weight": tuple(weight_shape), f"{prefix}.bias": (weight_shape[0],)}


def random_official_state(shapes, rng, total_step, it=0):
    """Random values for official state-dict names -> shapes: float32 parameters, and the PRepBN counters of a
    schedule at ``iter = it`` of ``total_step`` (warm-up over); integer buffers get int64 values."""
    state = {}
    for key, shape in shapes.items():
        if key.endswith(".total_step"):
            state[key] = np.array(total_step, np.int64)
        elif key.endswith(".iter"):
            state[key] = np.array(it, np.int64)
        elif key.endswith((".warm", "num_batches_tracked")):
            state[key] = np.array(0, np.int64)
        elif key.endswith("relative_position_index"):
            state[key] = rng.integers(0, 169, shape).astype(np.int64)
        else:
            state[key] = rng.standard_normal(shape).astype(np.float32)
    return state


def official_kwargs(kwargs):
    """The reference's constructor kwargs with its ``in_chans`` under MindCV's name ``in_channels``."""
    kwargs = dict(kwargs)
    if "in_chans" in kwargs:
        kwargs["in_channels"] = kwargs.pop("in_chans")
    return kwargs


def gamma_at(step, decay_steps, warmup_steps=0):
    """γ at ``step`` of a schedule, as a Python float."""
    return PRepBNSchedule(decay_steps, warmup_steps).gamma_value(step)


def rel_err(actual, expected):
    return float(np.abs(actual - expected).max() / max(1.0, float(np.abs(expected).max())))


def act_rel_err(actual, expected):
    return float(np.abs(actual - expected).max() / max(float(np.abs(expected).max()), 1e-12))


def capture_activations(net, names, x):
    """Eval outputs of the named cells (batch element 0, first 1/B of dim 0) in PyNative mode."""
    cells = dict(net.cells_and_names())
    missing = [n for n in names if n not in cells]
    assert not missing, f"cells not found in the MindSpore model: {missing}"
    outputs, handles = {}, []
    batch = x.shape[0]
    for name in names:
        def hook(cell, inputs, output, name=name):
            out = output[0] if isinstance(output, tuple) else output
            out = out.asnumpy()
            outputs[name] = out[: out.shape[0] // batch]
        handles.append(cells[name].register_forward_hook(hook))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        logits = net(ms.Tensor(x)).asnumpy()
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
        for h in handles:
            h.remove()
    return logits, outputs


def check_parity(net, fixture, act_name_map=None):
    """Load the fixture into ``net`` and assert eval logits, activations, features and train-mode parity.

    Returns a dict of the measured errors. ``act_name_map`` maps official module names to ours
    where they differ.
    """
    data, meta = load_fixture(fixture)
    load_official_checkpoint(net, os.path.join(FIXTURES, fixture))
    x = data["__input__"]
    errors = {}

    net.set_train(False)
    act_keys = [k for k in data if k.startswith("__act__.")]
    official = [k[len("__act__."):] for k in act_keys]
    ours = [(act_name_map or {}).get(n, n) for n in official]
    logits, acts = capture_activations(net, ours, x)
    errors["logits_eval"] = rel_err(logits, data["__logits_eval__"])
    assert errors["logits_eval"] <= 1e-4, f"{fixture}: eval logits differ by {errors['logits_eval']:.3g}"
    for off, mine in zip(official, ours):
        expected = data["__act__." + off]
        assert acts[mine].shape == expected.shape, f"{off}: shape {acts[mine].shape} vs {expected.shape}"
        err = act_rel_err(acts[mine], expected)
        errors["act." + off] = err
        assert err <= 1e-3, f"{fixture}: activation {off} differs by {err:.3g} (relative)"

    feats = net.forward_head(net.forward_features(ms.Tensor(x)), pre_logits=True).asnumpy()
    errors["features_eval"] = rel_err(feats, data["__features_eval__"])
    assert errors["features_eval"] <= 1e-4

    gamma = meta["train"]["gamma"]
    if gamma is not None:
        schedule = PRepBNSchedule.require(net)
        schedule.set(step=round((1 - gamma) * schedule.state()["decay_steps"]), warmup_steps=0)
    net.set_train(True)
    train_logits = net(ms.Tensor(x)).asnumpy()
    net.set_train(False)
    errors["logits_train"] = rel_err(train_logits, data["__logits_train__"])
    assert errors["logits_train"] <= 1e-4, f"{fixture}: train logits differ by {errors['logits_train']:.3g}"

    params = dict(net.parameters_and_names())
    for key in data:
        if not key.startswith("__train_after__.") or not key.endswith(("running_mean", "running_var")):
            continue
        name = key[len("__train_after__."):]
        ms_name = name.replace("running_mean", "moving_mean").replace("running_var", "moving_variance")
        err = act_rel_err(params[ms_name].asnumpy(), data[key])
        errors["bn." + name] = err
        assert err <= 1e-4, f"{fixture}: BN statistic {name} after one train step differs by {err:.3g}"
    return errors
