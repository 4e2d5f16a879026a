"""γ and lr schedules of train.py, observed inside the compiled train step.

The γ probe is one PRepBN on a fixed input, trained with lr 0 (weights never change and the BN uses
batch statistics), so the loss is exactly affine in the γ the layer used in that forward pass:
loss = γ·a + (1 − γ)·b with a, b computed here in numpy. Reading γ back from the loss observes the
value inside the graph, per micro-batch.
"""
import math
import types

import numpy as np
import mindspore as ms
import mindspore.dataset as ds
import pytest
from mindspore import Tensor, nn

import slab_ms
from slab_ms.layers import PRepBNSchedule
from slab_ms.models import tiny_config
from slab_ms.training import ConfigError, GammaDecay, TrainStep, build_optimizer
from slab_ms.training.lr_schedule import build_lr_schedule, timm_cosine_lr
from slab_ms.training.prepbn_recipe import resolve_prepbn_schedule
from slab_ms.weights.train_state import load_train_checkpoint, save_train_checkpoint
from parity_utils import gamma_at
from helpers import ACCUM, OPT_ARGS, T, WARM, GammaProbe, build_probe, observed_gammas, probe_constants


def test_gamma_in_graph_per_optimizer_step_with_accumulation_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32) * 2 + 0.5
    weight = rng.normal(size=(1, 1, 4)).astype(np.float32)
    a, b = probe_constants(x, weight)
    assert abs(a - b) > 0.1

    probe, optimizer, step = build_probe(weight)
    gamma_decay = GammaDecay(probe, optimizer, total_steps=6, print_fn=lambda *_: None, in_graph=True)
    gamma_decay.on_train_begin()
    first = []
    for _ in range(3):  # micro-batches 0..5 = optimizer steps 0..2
        first += observed_gammas(step, x, ACCUM, a, b)
        gamma_decay.on_train_step_end()  # raises if prepbn_step and the optimizer's step disagree
    assert PRepBNSchedule.require(probe).state()["step"] == 3
    assert int(optimizer.global_step.asnumpy().reshape(())) == 3
    save_train_checkpoint(str(tmp_path), "probe", probe, optimizer, step, epoch_num=0, step_num=3)

    probe2, optimizer2, step2 = build_probe(weight)  # a new process's objects: fresh graph, loaded state
    assert PRepBNSchedule.require(probe2).state()["step"] == 0
    assert load_train_checkpoint(str(tmp_path / "probe-0000_000003.ckpt"), probe2, optimizer2, step2) == (0, 3)
    gamma_decay2 = GammaDecay(probe2, optimizer2, total_steps=6, print_fn=lambda *_: None, in_graph=True)
    second = []
    for _ in range(3):
        second += observed_gammas(step2, x, ACCUM, a, b)
        gamma_decay2.on_train_step_end()
    gamma_decay2.on_train_end()  # γ = 0 exactly at the end of the 6 steps

    expected = [gamma_at(k // ACCUM, T, WARM) for k in range(12)]
    assert expected == [1.0, 1.0, 1.0, 1.0, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 0.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(first + second, expected, atol=1e-5)
    assert PRepBNSchedule.require(probe2).state() == {"step": 6, "decay_steps": T, "warmup_steps": WARM}


def test_gamma_decay_detects_a_desynchronised_schedule():
    probe, optimizer, _ = build_probe(np.ones((1, 1, 4), np.float32))
    PRepBNSchedule.require(probe).set(step=5)
    with pytest.raises(RuntimeError, match="out of step"):
        GammaDecay(probe, optimizer, total_steps=6, in_graph=True).on_train_step_end()


def test_accumulated_step_equals_one_big_batch_step_with_clipping_and_ema():
    """Two micro-batches of 4 = one batch of 8: same weights and EMA after the optimizer step."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=(8,)).astype(np.int32)
    init = {"weight": rng.normal(size=(3, 6)).astype(np.float32), "bias": np.zeros(3, np.float32)}

    def make(accum):
        net = nn.Dense(6, 3)
        net.weight.set_data(Tensor(init["weight"]))
        net.bias.set_data(Tensor(init["bias"]))
        optimizer = build_optimizer(net, OPT_ARGS, [0.1] * 10)
        step = TrainStep(nn.WithLossCell(net, nn.CrossEntropyLoss()), optimizer, net, clip_grad=0.05,
                         accumulate_steps=accum, ema_decay=0.5)
        step.set_train(True)
        return net, step

    net_big, step_big = make(1)
    _, norm_big = step_big(Tensor(x), Tensor(y))
    net_acc, step_acc = make(2)
    step_acc(Tensor(x[:4]), Tensor(y[:4]))
    np.testing.assert_array_equal(net_acc.weight.asnumpy(), init["weight"])  # no update mid-cycle
    _, norm_acc = step_acc(Tensor(x[4:]), Tensor(y[4:]))
    assert float(norm_big.asnumpy()) > 0.05  # the clip was active
    np.testing.assert_allclose(float(norm_acc.asnumpy()), float(norm_big.asnumpy()), rtol=1e-5)
    np.testing.assert_allclose(net_acc.weight.asnumpy(), net_big.weight.asnumpy(), atol=1e-6)
    for ema_acc, ema_big in zip(step_acc.ema_parameters(), step_big.ema_parameters()):
        np.testing.assert_allclose(ema_acc.asnumpy(), ema_big.asnumpy(), atol=1e-6)
    ema_weight = [p for p in step_big.ema_parameters() if p.name.endswith("weight")][0]
    np.testing.assert_allclose(ema_weight.asnumpy(), 0.5 * init["weight"] + 0.5 * net_big.weight.asnumpy(),
                               atol=1e-6)


def _args(**kw):
    base = dict(model="m", prepbn_decay_steps=None, prepbn_decay_ratio=None, prepbn_warmup_steps=0, lr=5e-4,
                warmup_lr=5e-7, min_lr=5e-6, scale_lr_batch=512, scheduler="timm_cosine", epochs=300,
                cooldown_epochs=10, warmup_epochs=20)
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_prepbn_schedule_from_steps_ratio_default_and_refusals():
    probe = GammaProbe(np.ones((1, 1, 4), np.float32))  # default T = 3
    assert resolve_prepbn_schedule(probe, _args(), 10) == (3, 0)
    assert resolve_prepbn_schedule(probe, _args(prepbn_decay_steps=8, prepbn_warmup_steps=2), 10) == (8, 2)
    assert resolve_prepbn_schedule(probe, _args(prepbn_decay_ratio=0.8), 1000) == (800, 0)
    with pytest.raises(ConfigError, match=r"longer than the run: T = 60000 .* > 24 optimizer steps"):
        resolve_prepbn_schedule(probe, _args(prepbn_decay_steps=60000), 24)
    with pytest.raises(ConfigError, match="longer than the run"):
        resolve_prepbn_schedule(probe, _args(prepbn_decay_steps=9, prepbn_warmup_steps=2), 10)
    with pytest.raises(ConfigError, match="no PRepBN layers"):
        resolve_prepbn_schedule(nn.Dense(2, 2), _args(prepbn_decay_steps=5), 10)
    assert resolve_prepbn_schedule(nn.Dense(2, 2), _args(), 10) is None


def test_lr_schedule_is_the_reference_per_step_cosine():
    """8 devices × 128, 1251 steps/epoch, 300 + 10 epochs, 20 warm-up: lrs ×1024/512."""
    steps, total_batch = 1251, 1024
    lrs = build_lr_schedule(_args(), steps, total_batch)
    assert len(lrs) == 310 * steps
    base, warm, low = 1e-3, 1e-6, 1e-5
    warmup_t, t_initial = 20 * steps, 300 * steps

    def timm(t):  # timm 0.4.12 CosineLRScheduler._get_lr, written out independently
        if t < warmup_t:
            return warm + t * (base - warm) / warmup_t
        return low + 0.5 * (base - low) * (1 + math.cos(math.pi * t / t_initial)) if t < t_initial else low

    for g in (0, 1, 2, 100, warmup_t, warmup_t + 1, 150 * steps, t_initial, t_initial + 1, 310 * steps - 1):
        assert lrs[g] == pytest.approx(timm(max(g - 1, 0)), rel=1e-12), g  # updated after each step
    assert lrs[0] == lrs[1] == pytest.approx(1e-6)
    assert max(lrs) == pytest.approx(1e-3, rel=1e-4)  # the cosine at the end of warm-up
    assert timm_cosine_lr(4, 2, 0, 0, 1.0, 0.0, 0.0)[1:] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(7)])
    mindcv = build_lr_schedule(_args(scheduler="cosine_decay", cooldown_epochs=0, epochs=10, warmup_epochs=2),
                               10, 512)
    assert len(mindcv) == 100 and mindcv[0] == pytest.approx(5e-7) and max(mindcv) == pytest.approx(5e-4, rel=0.02)


def _tiny_prepbn_model(decay_steps):
    net = slab_ms.create_model("slab_deit_tiny", num_classes=3, **dict(tiny_config("slab_deit_tiny"), image_size=16))
    PRepBNSchedule.require(net).set(decay_steps=decay_steps)
    return net


def test_gamma_decay_decays_under_mindspore_model_train():
    """``Model.train`` with a standard train cell never touches the schedule; the callback advances it once per
    optimizer step (read from the optimizer), so the run ends at γ = 0 as the evaluation form assumes."""
    net = _tiny_prepbn_model(decay_steps=3)
    rng = np.random.default_rng(0)
    data = ds.NumpySlicesDataset({"image": rng.standard_normal((8, 3, 16, 16)).astype(np.float32),
                                  "label": rng.integers(0, 3, 8).astype(np.int32)}, shuffle=False).batch(2)
    optimizer = nn.AdamWeightDecay(net.trainable_params(), learning_rate=1e-3)
    model = ms.Model(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"), optimizer)
    gammas = []

    class Record(ms.train.Callback):
        def on_train_step_end(self, run_context):
            gammas.append(gamma_decay.gamma)

    gamma_decay = GammaDecay(net, optimizer, total_steps=4, print_fn=lambda *_: None)
    model.train(1, data, callbacks=[gamma_decay, Record()], dataset_sink_mode=False)
    assert gamma_decay.in_graph is False
    assert PRepBNSchedule.require(net).state()["step"] == 4 and gammas == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0])


def test_gamma_decay_in_a_user_loop_counts_optimizer_steps_under_accumulation():
    net = _tiny_prepbn_model(decay_steps=2)
    gamma_decay = GammaDecay(net, total_steps=2, accumulate_steps=2, print_fn=lambda *_: None)
    gamma_decay.on_train_begin()
    seen = [gamma_decay.on_train_step_end() for _ in range(4)]  # 4 micro-batches = 2 optimizer steps
    assert seen == pytest.approx([1.0, 0.5, 0.5, 0.0])
    gamma_decay.on_train_end()
    too_long = _tiny_prepbn_model(decay_steps=5)
    with pytest.raises(ValueError, match=r"longer than the run.*create_model\(\.\.\., prepbn_decay_steps=N\).*"
                                         r"PRepBNSchedule\.of\(net\)\.set\(decay_steps=N\) with N <= 4\.$"):
        GammaDecay(too_long, total_steps=4).on_train_begin()
    PRepBNSchedule.of(too_long).set(decay_steps=4)  # the fix the message names
    GammaDecay(too_long, total_steps=4, print_fn=lambda *_: None).on_train_begin()


def test_gamma_decay_in_sink_mode_advances_by_the_steps_each_call_covers():
    """With dataset sinking MindSpore calls the callback once per ``sink_size`` steps; ``cur_step_num`` says how
    many steps were taken, and the schedule jumps to them (γ is then constant within a sink)."""
    net = _tiny_prepbn_model(decay_steps=4)
    gamma_decay = GammaDecay(net, total_steps=6, print_fn=lambda *_: None)

    def context(step):
        params = types.SimpleNamespace(cur_step_num=step, train_network=nn.Dense(2, 2))
        return types.SimpleNamespace(original_args=lambda: params)

    gamma_decay.on_train_begin(context(0))
    assert gamma_decay.in_graph is False  # a standard train cell: the callback advances γ
    assert [gamma_decay.on_train_step_end(context(s)) for s in (2, 4, 6)] == pytest.approx([0.5, 0.0, 0.0])
    assert PRepBNSchedule.require(net).state()["step"] == 6
    gamma_decay.on_train_end(context(6))
    in_graph = GammaDecay(_tiny_prepbn_model(decay_steps=4), total_steps=6)
    params = types.SimpleNamespace(cur_step_num=0, train_network=types.SimpleNamespace(has_schedule=True))
    in_graph.on_train_begin(types.SimpleNamespace(original_args=lambda: params))
    assert in_graph.in_graph is True  # this package's TrainStep advances γ itself: the callback only checks
