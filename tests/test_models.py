"""Every registered model, built from its family's ``test_configs``: a new family is tested by being registered.

Forward pass, a gradient for every parameter in GRAPH_MODE, the deploy form (every norm folded, same
logits), and the official-checkpoint mapping covering every parameter. Family files keep only what is
specific to them (parity with the reference, layouts, input sizes).
"""
import inspect

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn

import slab_ms
from slab_ms.layers import ChannelAffine, PRepBNSchedule
from slab_ms.models import family_of, tiny_config
from slab_ms.reparam import remaining_norms
from slab_ms.weights import convert_state_dict
from slab_ms.weights.official import official_names
from helpers import norm_cells, randomize, relative_error, tiny_input

MODELS = slab_ms.list_models()


def tiny(name, **kwargs):
    return slab_ms.create_model(name, num_classes=10, **dict(tiny_config(name), **kwargs))


def test_mindcv_lists_ours_under_their_own_module_names():
    import mindcv
    assert mindcv.list_models(module="slab") == MODELS
    assert mindcv.list_models(module="slab_pvt") == ["pvt_medium_prepbn", "pvt_small_prepbn", "pvt_tiny_prepbn",
                                                     "slab_pvt_tiny"]
    assert not set(mindcv.list_models(module="pvt")) & set(MODELS)  # MindCV's own PVT models only


def test_each_family_module_exports_each_of_its_factories_once():
    families = {family_of(name) for name in MODELS}
    for module in families:
        assert len(module.__all__) == len(set(module.__all__)), module.__name__
    assert sorted(n for m in families for n in m.__all__ if n in MODELS) == MODELS


def test_every_family_names_its_models_the_same_way():
    families = {family_of(name) for name in MODELS}
    assert {f.__name__.rsplit(".", 1)[-1] for f in families} == {"deit", "pvt", "swin", "cswin"}
    for family in families:
        names = sorted(n for n in MODELS if family_of(n) is family)
        assert sorted(family.ARCHS) == names == sorted(family.test_configs) == sorted(family.default_cfgs)
        for name in names:  # the timm / MindCV factory shape: (pretrained=False, **kwargs)
            assert list(inspect.signature(getattr(family, name)).parameters) == ["pretrained", "kwargs"]


@pytest.mark.parametrize("name", MODELS)
def test_forward_and_a_gradient_for_every_parameter_in_graph_mode(name):
    ms.set_seed(0)
    net = tiny(name)
    schedule = PRepBNSchedule.of(net)
    if schedule:  # γ = 0.5, so that both the LayerNorm and the RepBN branch learn
        schedule.set(step=schedule.state()["decay_steps"] // 2)
    net.set_train(True)
    params = net.trainable_params()
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

    def forward(images, labels):
        logits = net(images)
        return loss_fn(logits, labels), logits

    (loss, logits), grads = ms.jit(ms.value_and_grad(forward, None, params, has_aux=True))(
        tiny_input(name), Tensor(np.array([1, 7], np.int32)))
    assert ms.get_context("mode") == ms.GRAPH_MODE
    assert logits.shape == (2, 10) and np.isfinite(logits.asnumpy()).all() and np.isfinite(loss.asnumpy())
    dead = [p.name for p, g in zip(params, grads) if not np.abs(g.asnumpy()).max() > 0]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("name", MODELS)
def test_deploy_form_folds_every_norm_and_keeps_the_logits(name):
    net = randomize(tiny(name))
    x = tiny_input(name)
    expected = net(x).asnumpy()
    assert 1.0 < np.abs(expected).max() < 1e5  # the 1e-4·max(1, |logit|) tolerance is then relative
    deploy = slab_ms.reparameterize_model(net)
    assert relative_error(deploy(x).asnumpy(), expected) <= 1e-4
    assert norm_cells(deploy) == [] and remaining_norms(deploy) == []
    assert not any(isinstance(cell, ChannelAffine) for _, cell in deploy.cells_and_names())
    assert PRepBNSchedule.of(deploy) is None  # no PRepBN left to read the schedule
    # The training form is untouched (the deploy form is a copy) and its parameters keep their names.
    assert norm_cells(net) and np.array_equal(net(x).asnumpy(), expected)
    assert all(p.name == n for n, p in deploy.parameters_and_names())


@pytest.mark.parametrize("name", MODELS)
def test_official_names_cover_every_parameter_and_convert_back(name):
    """The reference's names for every parameter, plus the PRepBN counters the reference keeps per layer,
    map back strictly onto the model with the same values and the same γ schedule."""
    net = tiny(name)
    rng = np.random.default_rng(0)
    values = {n: rng.standard_normal(p.shape).astype(np.float32) for n, p in net.parameters_and_names()
              if not PRepBNSchedule.is_schedule_parameter(n)}
    state = {official: values[n] for n, official in official_names(net).items()}
    assert len(state) == len(values)  # one official name each, none shared
    if PRepBNSchedule.of(net):
        state.update({"norm_counters.iter": np.array(7), "norm_counters.total_step": np.array(20),
                      "norm_counters.warm": np.array(0)})
    params, schedule, _ = convert_state_dict(net, state)
    assert sorted(params) == sorted(values)
    assert all(np.array_equal(params[n].asnumpy(), v) for n, v in values.items())
    assert schedule == ((13, 20, 0) if PRepBNSchedule.of(net) else None)


def test_every_factory_takes_the_official_kwarg_names():
    for model in MODELS:
        config = tiny_config(model)
        size = config.pop("image_size")
        official = slab_ms.create_model(model, num_classes=10, img_size=size, in_chans=1, **config)
        ours = slab_ms.create_model(model, num_classes=10, image_size=size, in_channels=1, **config)
        assert official.in_channels == ours.in_channels == 1
        assert ([(n, p.shape) for n, p in official.parameters_and_names()]
                == [(n, p.shape) for n, p in ours.parameters_and_names()])
    with pytest.raises(ValueError, match="disagree"):
        slab_ms.create_model("slab_deit_tiny", in_channels=2, in_chans=1)
