"""Mixed precision the Ascend way, run in float16 on CPU: every registered model trains at O1, O2 and O3 under
MindCV's ``auto_mixed_precision`` + ``nn.TrainOneStepCell`` and at O2 and O3 under this package's ``TrainStep``
(and MindSpore's own O1 rewrite); float16 logits and
gradients stay close to float32; γ decays in MindCV's trainer and ``mindspore.Model`` with no callback of ours, and
``GammaDecay`` does not count twice.

The twelve registered models build eight different tiny graphs (the tiny configs of a family's models differ only
in T, which no graph reads); each graph is compiled once per level and trainer.
"""
import functools
import os
import subprocess
import sys

import numpy as np
import mindspore as ms
import mindspore.dataset as ds
import pytest
from mindspore import Tensor, nn
from mindspore.train import FixedLossScaleManager, Model
from mindcv.loss import create_loss
from mindcv.optim import create_optimizer
from mindcv.utils import create_trainer
from mindcv.utils.amp import auto_mixed_precision

import slab_ms
from slab_ms.layers import PRepBNSchedule
from slab_ms.models import tiny_config
from slab_ms.models.llama import CausalLMLoss, create_llama
from slab_ms.training import GammaDecay, NetWithLoss, TrainStep
from helpers import randomize

STEPS = 2
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(name, **kwargs):
    return slab_ms.create_model(name, num_classes=10, **dict(tiny_config(name), **kwargs))


def graph_key(net):
    """What a compiled graph depends on: the cell tree and every parameter's name, shape and dtype."""
    return (tuple((name, type(cell).__name__) for name, cell in net.cells_and_names()),
            tuple((p.name, p.shape, str(p.dtype)) for p in net.get_parameters() if not p.name.startswith("prepbn_")))


@functools.lru_cache(maxsize=None)
def distinct_graphs():
    """One model name per distinct tiny graph, and the names it stands for."""
    groups = {}
    for name in slab_ms.list_models():
        groups.setdefault(graph_key(tiny(name)), []).append(name)
    return {names[0]: names for names in groups.values()}


def images(name, batch=2, seed=0):
    size = tiny_config(name)["image_size"]
    rng = np.random.default_rng(seed)
    return Tensor(rng.standard_normal((batch, 3, size, size)).astype(np.float32)), Tensor(
        rng.integers(0, 10, batch).astype(np.int32))


def test_the_twelve_models_build_eight_graphs():
    groups = distinct_graphs()
    assert sorted(n for names in groups.values() for n in names) == slab_ms.list_models()
    assert len(groups) == 8


def _assert_float32_state(net):
    """Weights, BN statistics and the schedule keep their dtypes and stay finite."""
    for p in net.get_parameters():
        assert p.dtype in (ms.float32, ms.int32), (p.name, p.dtype)
        assert np.isfinite(p.asnumpy()).all(), p.name


def _mindcv_amp_step(net, level):
    auto_mixed_precision(net, level)
    loss = NetWithLoss(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    return nn.TrainOneStepCell(loss, nn.Momentum(net.trainable_params(), 0.01, 0.9))


def _our_train_step(net, level):
    auto_mixed_precision(net, level)
    loss = NetWithLoss(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    return TrainStep(loss, nn.Momentum(net.trainable_params(), 0.01, 0.9), net, loss_scale=1024.0,
                     loss_scale_type="dynamic", drop_overflow_update=True)


@pytest.mark.parametrize("trainer, level", [("mindcv_amp", "O2"), ("mindcv_amp", "O3"), ("train_step", "O2"),
                                            ("train_step", "O3")])
@pytest.mark.parametrize("name", sorted(distinct_graphs()))
def test_every_model_trains_finite_under_amp(name, level, trainer):
    """O2 keeps LayerNorm / BatchNorm in float32; O3 casts everything but the layers' own float32 islands."""
    _train_finite(name, level, trainer)


@pytest.mark.parametrize("name", ["slab_deit_small", "slab_pvt_tiny", "slab_swin_small", "slab_cswin_tiny"])
def test_every_family_trains_finite_under_mindcv_o1(name):
    """MindCV's O1 wraps every Dense / Conv2d in a cell without their methods and weights: the patch embedding,
    PVT's spatial reduction, SLA's depth-wise conv, CSwin's LePE and the MLP then call the wrapped cell (the SLAB
    model of each family has every one of those cells of its family)."""
    _train_finite(name, "O1", "mindcv_amp")


def _train_finite(name, level, trainer):
    ms.set_seed(0)
    net = tiny(name)
    schedule = PRepBNSchedule.of(net)
    if schedule:
        schedule.set(decay_steps=2 * STEPS)
    step = (_mindcv_amp_step if trainer == "mindcv_amp" else _our_train_step)(net, level)
    step.set_train()
    losses = []
    for i in range(STEPS):
        out = step(*images(name, seed=i))
        losses.append(float((out[0] if isinstance(out, tuple) else out).asnumpy()))
    assert np.isfinite(losses).all(), losses
    _assert_float32_state(net)
    if schedule:  # the model counts its training forwards; TrainStep claims the schedule and counts optimizer steps
        skipped = step.loss_scale_state()[1] if trainer == "train_step" else 0
        assert schedule.state()["step"] == STEPS - skipped


_O1_REWRITE = """
import numpy as np, mindspore as ms
from mindspore import Tensor, nn
import slab_ms
from slab_ms.models import tiny_config
ms.set_context(mode=ms.GRAPH_MODE)
for name in ("slab_pvt_tiny", "slab_swin_tiny"):
    ms.set_seed(0)
    net = ms.amp.auto_mixed_precision(slab_ms.create_model(name, num_classes=10, **tiny_config(name)), "O1")
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    step = nn.TrainOneStepCell(loss, nn.Momentum(net.trainable_params(), 0.01, 0.9))
    step.set_train()
    size = tiny_config(name)["image_size"]
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32))
    losses = [float(step(x, Tensor(np.array([1, 7], np.int32))).asnumpy()) for _ in range(2)]
    print(name, "finite" if np.isfinite(losses).all() else "NOT FINITE", losses)
"""


def test_mindspore_o1_rewrite_trains_pvt_and_swin(tmp_path):
    """``mindspore.amp.auto_mixed_precision(net, "O1")`` (what ``Model(amp_level="O1")`` applies) rewrites the
    model's Python code: it re-runs signatures without the module's names, so defaults are literals. In its own
    process and folder: the rewrite writes ./rewritten_network and leaves MindSpore's later gradient graphs broken."""
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_v="3")
    result = subprocess.run([sys.executable, "-c", _O1_REWRITE], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [["slab_pvt_tiny", "finite"],
                                                                        ["slab_swin_tiny", "finite"]]


# ------------------------------------------------------------------------------ float16 against float32
FAMILY_MODELS = ["slab_deit_tiny", "slab_pvt_tiny", "slab_swin_tiny", "slab_cswin_tiny"]
LOGIT_TOL = 2e-2  # max |Δ logit| / max(1, max |logit|)
GRAD_TOL = 5e-2  # ‖Δ grad‖ / ‖grad‖ over all parameters


def _copy(src, dst):
    ms.load_param_into_net(dst, {p.name: ms.Parameter(p.data.copy(), name=p.name) for p in src.get_parameters()})
    return dst


def _grads(net, x, y):
    net.set_train(True)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    params = net.trainable_params()

    def loss(images_, labels):
        return loss_fn(net(images_).astype(ms.float32), labels)

    grads = ms.jit(ms.value_and_grad(loss, None, params))(x, y)[1]
    return np.concatenate([g.asnumpy().astype(np.float64).ravel() for g in grads])


@pytest.mark.parametrize("level", ["O2", "O3"])
@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_float16_logits_and_gradients_follow_float32(name, level):
    """Eval logits within LOGIT_TOL and one training gradient (γ = 0.5: both PRepBN sides) within GRAD_TOL."""
    ms.set_seed(0)
    reference = randomize(tiny(name), weight_gain=0.5)
    schedule = PRepBNSchedule.of(reference)
    if schedule:
        schedule.set(step=schedule.state()["decay_steps"] // 2)
    amp = _copy(reference, tiny(name))
    auto_mixed_precision(amp, level)
    x, y = images(name, batch=4)
    for net in (reference, amp):
        net.set_train(False)
    expected = reference(x).asnumpy()
    got = amp(x).asnumpy().astype(np.float32)
    assert np.abs(got - expected).max() <= LOGIT_TOL * max(1.0, np.abs(expected).max())
    for net in (reference, amp):  # the same γ for both; gradients through BN's batch statistics
        if PRepBNSchedule.of(net):
            PRepBNSchedule.of(net).claim()
    g32, g16 = _grads(reference, x, y), _grads(amp, x, y)
    assert np.isfinite(g16).all() and np.linalg.norm(g16 - g32) <= GRAD_TOL * np.linalg.norm(g32)


@pytest.mark.parametrize("level", ["O2", "O3"])
def test_the_llama_decoder_trains_under_amp_and_follows_float32(level):
    ms.set_seed(0)
    reference = create_llama("llama_tiny", prepbn_decay_steps=2 * STEPS)
    net = _copy(reference, create_llama("llama_tiny", prepbn_decay_steps=2 * STEPS))
    auto_mixed_precision(net, level)
    ids = Tensor(np.random.default_rng(0).integers(0, 128, (2, 16)).astype(np.int32))
    for model in (reference, net):
        model.set_train(False)
    expected, got = reference(ids).asnumpy(), net(ids).asnumpy().astype(np.float32)
    assert np.abs(got - expected).max() <= LOGIT_TOL * max(1.0, np.abs(expected).max())

    class LMLoss(nn.Cell):
        def __init__(self, model):
            super().__init__()
            self.model, self.loss = model, CausalLMLoss(model.config.vocab_size)

        def construct(self, tokens, labels):
            return self.loss(self.model(tokens).astype(ms.float32), labels)

    step = nn.TrainOneStepCell(LMLoss(net), nn.AdamWeightDecay(net.trainable_params(), 1e-3))
    step.set_train()
    losses = [float(step(ids[:, :-1], ids[:, 1:]).asnumpy()) for _ in range(STEPS)]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert PRepBNSchedule.of(net).state()["step"] == STEPS
    _assert_float32_state(net)


# ------------------------------------------------------------------------- γ in other people's trainers
def _dataset(name, steps, batch=2):
    size = tiny_config(name)["image_size"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps * batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 10, steps * batch).astype(np.int32)
    return ds.NumpySlicesDataset((x, y), column_names=["image", "label"], shuffle=False).batch(batch)


@pytest.mark.parametrize("sink", [False, True])
@pytest.mark.parametrize("callback", [False, True])
def test_mindcv_trainer_decays_gamma_to_zero_with_or_without_gamma_decay(sink, callback):
    """MindCV's train.py flow (create_optimizer, create_loss, create_trainer at O2 with a fixed loss scale): the
    schedule ends at step = optimizer steps (γ = 0) without any callback of ours, and GammaDecay added to the same
    flow does not count a step twice."""
    name, steps = "slab_deit_tiny", 4
    ms.set_seed(0)
    net = tiny(name, prepbn_decay_steps=steps)
    opt = create_optimizer(net.trainable_params(), opt="adamw", lr=1e-3)
    trainer = create_trainer(net, create_loss(name="CE"), opt, None, amp_level="O2", amp_cast_list=None,
                             loss_scale_type="fixed", loss_scale=1024.0)
    callbacks = [GammaDecay(net, opt, total_steps=steps, print_fn=lambda *_: None)] if callback else []
    trainer.train(1, _dataset(name, steps), callbacks=callbacks, dataset_sink_mode=sink)
    assert PRepBNSchedule.of(net).state()["step"] == steps and PRepBNSchedule.of(net).gamma_value() == 0.0


def test_mindspore_model_at_o2_trains_a_slab_model_200_steps_finite():
    """``mindspore.Model(amp_level="O2")`` with the fixed loss scale MindSpore accepts on CPU (no overflow skipping:
    one inf gradient would turn the weights NaN) over 200 steps; γ decays on its own and evaluation stays finite."""
    name, steps = "slab_deit_tiny", 200
    ms.set_seed(0)
    net = tiny(name, prepbn_decay_steps=150, depth=1, embed_dim=32, num_heads=2)
    losses = []

    class Record(ms.train.Callback):
        def on_train_step_end(self, run_context):
            losses.append(float(run_context.original_args().net_outputs.asnumpy()))

    model = Model(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"),
                  nn.AdamWeightDecay(net.trainable_params(), 1e-3), amp_level="O2",
                  loss_scale_manager=FixedLossScaleManager(1024.0, drop_overflow_update=False))
    model.train(1, _dataset(name, steps, batch=4), callbacks=[Record()], dataset_sink_mode=False)
    assert len(losses) == steps and np.isfinite(losses).all()
    assert np.mean(losses[-20:]) < np.mean(losses[:20])  # it learned something
    assert PRepBNSchedule.of(net).state()["step"] == steps and PRepBNSchedule.of(net).gamma_value() == 0.0
    _assert_float32_state(net)
    net.set_train(False)
    assert np.isfinite(net(images(name)[0]).asnumpy().astype(np.float32)).all()
