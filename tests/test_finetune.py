"""Fine-tuning from a checkpoint: the γ schedule continues where the checkpoint was (prepbn_schedule
continue, the default) or starts at γ = 1 again (restart).

γ is read inside the compiled train step with the γ probe of tests/helpers.py: one PRepBN (T = 3, warm-up 1) on a
fixed input trained with lr 0, whose loss is exactly γ·a + (1 − γ)·b. "Loading a checkpoint" is setting the
probe's counters, which is all a loaded checkpoint changes in the schedule; the official-checkpoint test
loads a real ``.pth``.
"""
import os
import types

import numpy as np
import pytest

import slab_ms
from slab_ms.layers import PRepBNSchedule
from parity_utils import gamma_at
from slab_ms.training import ConfigError, GammaDecay, parse_args
from slab_ms.weights.train_state import load_train_checkpoint, save_train_checkpoint
from slab_ms.training.prepbn_recipe import start_prepbn_schedule
from helpers import ACCUM, T, WARM, build_probe, observed_gammas, probe_constants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINISHED = 7  # ≥ WARM + T: the decay is over, γ = 0


@pytest.fixture(scope="module")
def probe_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32) * 2 + 0.5
    weight = rng.normal(size=(1, 1, 4)).astype(np.float32)
    a, b = probe_constants(x, weight)
    assert abs(a - b) > 0.1
    return x, weight, a, b


def _args(**kw):
    base = dict(model="probe", ckpt_file="w.ckpt", prepbn_schedule="continue", prepbn_decay_steps=None,
                prepbn_decay_ratio=None, prepbn_warmup_steps=0)
    base.update(kw)
    return types.SimpleNamespace(**base)


def _start(probe, optimizer, args, total_steps):
    """What train.py does after loading --checkpoint_path: plan, set, and watch the schedule."""
    start, note = start_prepbn_schedule(probe, args, total_steps)
    PRepBNSchedule.require(probe).set(step=start[0], decay_steps=start[1], warmup_steps=start[2])
    gamma_decay = GammaDecay(probe, optimizer, total_steps, print_fn=lambda *_: None, start_step=start[0],
                             in_graph=True)
    gamma_decay.on_train_begin()
    return start, note, gamma_decay


def _train(step, gamma_decay, data, optimizer_steps):
    x, _, a, b = data
    gammas = []
    for _ in range(optimizer_steps):
        gammas += observed_gammas(step, x, ACCUM, a, b)
        gamma_decay.on_train_step_end()  # raises unless prepbn_step == start + the optimizer's step
    return gammas


def test_finished_checkpoint_trains_with_gamma_zero_in_every_step(probe_data):
    probe, optimizer, step = build_probe(probe_data[1])
    PRepBNSchedule.require(probe).set(step=FINISHED)  # as loaded from an end-of-training checkpoint
    start, note, gamma_decay = _start(probe, optimizer, _args(prepbn_decay_steps=2), total_steps=3)
    assert start == (FINISHED, T, WARM)
    assert "prepbn_schedule continue: its γ schedule is finished (step 7 ≥ warm-up 1 + T 3)" in note
    assert "γ = 0.0000 at the start and throughout" in note and "T = 2 (prepbn_decay_steps) is unused" in note
    gammas = _train(step, gamma_decay, probe_data, 3)
    np.testing.assert_allclose(gammas, [0.0] * 3 * ACCUM, atol=1e-5)
    gamma_decay.on_train_end()
    assert PRepBNSchedule.require(probe).state() == {"step": FINISHED + 3, "decay_steps": T, "warmup_steps": WARM}


def test_mid_schedule_checkpoint_continues_the_decay_exactly_across_a_resume(probe_data, tmp_path):
    """From step 2 (γ = 2/3): one optimizer step, a resumable checkpoint, a fresh process's objects that
    derive the start step as prepbn_step − global_step, two more steps; γ = 0 exactly at the end."""
    probe, optimizer, step = build_probe(probe_data[1])
    PRepBNSchedule.require(probe).set(step=2)
    start, note, gamma_decay = _start(probe, optimizer, _args(prepbn_decay_steps=T), total_steps=3)
    assert start == (2, T, WARM)
    assert note.endswith("γ goes on from its step 2 (T=3, warm-up 1): γ = 0.6667 at the start, 0 after 2 of this "
                         "run's 3 optimizer steps")
    first = _train(step, gamma_decay, probe_data, 1)
    save_train_checkpoint(str(tmp_path), "probe", probe, optimizer, step, epoch_num=0, step_num=1)

    probe2, optimizer2, step2 = build_probe(probe_data[1])
    load_train_checkpoint(str(tmp_path / "probe-0000_000001.ckpt"), probe2, optimizer2, step2)
    global_step = int(optimizer2.global_step.asnumpy().reshape(()))
    resumed_start = PRepBNSchedule.require(probe2).state()["step"] - global_step
    assert (global_step, resumed_start) == (1, 2)
    with pytest.raises(RuntimeError, match="out of step"):  # a resume that forgot the start step is caught
        GammaDecay(probe2, optimizer2, 3, start_step=0, in_graph=True).on_train_begin()
    gamma_decay2 = GammaDecay(probe2, optimizer2, 3, print_fn=lambda *_: None, start_step=resumed_start,
                              in_graph=True)
    second = _train(step2, gamma_decay2, probe_data, 2)
    gamma_decay2.on_train_end()

    expected = [gamma_at(2 + k // ACCUM, T, WARM) for k in range(3 * ACCUM)]
    assert expected == [2 / 3, 2 / 3, 1 / 3, 1 / 3, 0.0, 0.0]
    np.testing.assert_allclose(first + second, expected, atol=1e-5)
    assert PRepBNSchedule.require(probe2).state()["step"] == 5


def test_restart_starts_at_gamma_one_with_the_recipe_schedule(probe_data):
    probe, optimizer, step = build_probe(probe_data[1])
    PRepBNSchedule.require(probe).set(step=FINISHED)
    start, note, gamma_decay = _start(probe, optimizer, _args(prepbn_schedule="restart", prepbn_decay_steps=2),
                                      total_steps=2)
    assert start == (0, 2, 0)
    assert note.endswith("prepbn_schedule restart: its γ schedule (step 7, T=3, warm-up 1, γ=0.0000) is replaced "
                         "by this run's (T=2, warm-up 0): γ = 1.0000 at the start")
    np.testing.assert_allclose(_train(step, gamma_decay, probe_data, 2), [1.0, 1.0, 0.5, 0.5], atol=1e-5)
    gamma_decay.on_train_end()


def test_continue_refuses_what_would_not_end_at_gamma_zero_or_contradicts_the_checkpoint(probe_data):
    probe, optimizer, _ = build_probe(probe_data[1])
    PRepBNSchedule.require(probe).set(step=2)  # γ = 2/3, 2 steps of decay left
    with pytest.raises(ConfigError, match=r"2 steps of decay left > 1 optimizer steps"):
        start_prepbn_schedule(probe, _args(), 1)
    with pytest.raises(ConfigError, match=r"at step 2 of its γ schedule \(T=3, warm-up 1, γ=0.6667\), but the "
                                          r"recipe asks for T = 5 \(prepbn_decay_ratio 0.5 × 10 steps\).*"
                                          r"--prepbn_decay_ratio none.*--prepbn_schedule restart"):
        start_prepbn_schedule(probe, _args(prepbn_decay_ratio=0.5), 10)
    with pytest.raises(ConfigError, match="prepbn_warmup_steps 2.*--prepbn_warmup_steps 0"):
        start_prepbn_schedule(probe, _args(prepbn_warmup_steps=2), 10)
    assert start_prepbn_schedule(probe, _args(prepbn_decay_steps=T, prepbn_warmup_steps=WARM), 2)[0] == (2, T, WARM)
    assert start_prepbn_schedule(probe, _args(ckpt_file=""), 10) == ((0, T, 0), None)  # a new run
    with pytest.raises(ValueError, match="longer than the run"):  # the callback checks the remaining decay too
        GammaDecay(probe, optimizer, 1, start_step=2, in_graph=True).on_train_begin()


def test_official_pth_fine_tunes_as_pure_repbn_with_its_paper_recipe():
    """The released deit_small_prepbn.pth format (iter = 0: finished, T = 300000) with the paper recipe on a
    20-step run: continue keeps γ = 0; restart would need T = 300000 steps and is refused."""
    pth = os.path.join(ROOT, "tests", "fixtures", "official_small_deit_prepbn.pth")
    net = slab_ms.create_model("deit_small_prepbn", num_classes=10, image_size=64, embed_dim=48, depth=2,
                               num_heads=3, checkpoint_path=pth)
    argv = ["-c", os.path.join(ROOT, "configs", "deit", "deit_small_prepbn.yaml"), "--data_dir", "unused",
            "--ckpt_file", pth]
    start, note = start_prepbn_schedule(net, parse_args(argv), 20)
    assert start == (300000, 300000, 0)
    assert "γ = 0.0000 at the start and throughout: pure RepBN fine-tuning" in note
    with pytest.raises(ConfigError, match="longer than the run: T = 300000"):
        start_prepbn_schedule(net, parse_args(argv + ["--prepbn_schedule", "restart"]), 20)


def test_prepbn_schedule_defaults_to_continue_and_a_recipe_value_is_checked(tmp_path):
    assert parse_args(["--model", "slab_deit_tiny", "--data_dir", "d"]).prepbn_schedule == "continue"
    config = tmp_path / "recipe.yaml"
    config.write_text("model: slab_deit_tiny\ndata_dir: d\nprepbn_schedule: restart\n")
    assert parse_args(["-c", str(config)]).prepbn_schedule == "restart"
    config.write_text("model: slab_deit_tiny\ndata_dir: d\nprepbn_schedule: restrat\n")
    with pytest.raises(ConfigError, match="key 'prepbn_schedule' is 'restrat'; choose one of continue, restart"):
        parse_args(["-c", str(config)])


# Bicubic (Keys' kernel, a = -0.75, half-pixel centres: torch's interpolate(mode="bicubic"), the reference's) of
# f(r) = r² on a 14-row grid, sampled at the 4-row grid's centres r = 1.25, 4.75, 8.25, 11.75. Bilinear would give
# 1.75, 22.75, 68.25, 138.25 (and a transposed grid a function of the column instead of the row).
BICUBIC_R2_14_TO_4 = np.array([1.609375, 22.046875, 68.765625, 136.890625])


def test_a_224_checkpoint_loads_into_a_64_model_with_its_position_tables_resized(tmp_path, caplog):
    """The position tables (DeiT's pos_embed with its class token, SLA's positional encodings) are resized
    bicubically at load, with one line naming them; the 64² model then gives about the logits of the 224² model
    on the same 64² input (which resizes the tables bilinearly at run time)."""
    import logging
    import mindspore as ms
    from slab_ms.weights import save_checkpoint
    ms.set_context(mode=ms.PYNATIVE_MODE)
    kwargs = dict(num_classes=10, embed_dim=32, depth=1, num_heads=2, patch_size=16)
    rows = np.repeat(np.arange(14.0), 14)  # the row of each token of the 14x14 grid, row-major
    x = ms.Tensor(np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32))
    for name in ("deit_tiny_prepbn", "slab_deit_tiny"):
        big = slab_ms.create_model(name, image_size=224, **kwargs)
        tables = [n for n, _ in big.parameters_and_names() if n.endswith(("pos_embed", "positional_encoding"))]
        channels = np.arange(32)
        for n in tables:  # smooth in rows and columns; channel 0 is r² / 100
            param = big.parameters_dict()[n]
            grid = 0.5 * np.sin(0.3 * rows[:, None] + channels) * np.cos(0.2 * np.tile(np.arange(14.0), 14)[:, None])
            grid[:, 0] = rows ** 2 / 100
            prefix = param.shape[1] - 196
            value = np.concatenate([np.full((prefix, 32), 7.0), grid])[None].astype(np.float32)
            param.set_data(ms.Tensor(value))
        path = str(tmp_path / f"{name}.ckpt")
        save_checkpoint(big, path)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            small = slab_ms.create_model(name, image_size=64, checkpoint_path=path, **kwargs)
        lines = [r.getMessage() for r in caplog.records if "position table" in r.getMessage()]
        assert len(lines) == 1 and f"resized {len(tables)} position table(s)" in lines[0]
        assert "pos_embed 14x14 -> 4x4" in lines[0]
        for n in tables:
            value = small.parameters_dict()[n].asnumpy()[0]
            prefix = value.shape[0] - 16
            assert (value[:prefix] == 7.0).all()  # the class token's position is kept
            np.testing.assert_allclose(value[prefix:, 0], np.repeat(BICUBIC_R2_14_TO_4, 4) / 100, rtol=1e-5)
        big.set_train(False)
        small.set_train(False)
        expected, got = big(x).asnumpy(), small(x).asnumpy()
        assert np.isfinite(got).all()
        assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max(), name
        assert (got.argmax(1) == expected.argmax(1)).all()
    # Swin: a window clamped to a smaller stage map shrinks the relative position bias table ((2w - 1)², heads)
    kwargs = dict(num_classes=10, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    big = slab_ms.create_model("slab_swin_tiny", image_size=224, **kwargs)
    table = big.parameters_dict()["layers.2.blocks.0.attn.relative_position_bias_table"]
    table.set_data(ms.Tensor(np.repeat(np.arange(13.0), 13)[:, None].astype(np.float32)))  # the row offset dy
    save_checkpoint(big, str(tmp_path / "swin.ckpt"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        small = slab_ms.create_model("slab_swin_tiny", image_size=64, checkpoint_path=str(tmp_path / "swin.ckpt"),
                                     **kwargs)
    (line,) = [r.getMessage() for r in caplog.records if "position table" in r.getMessage()]
    assert ("layers.2.blocks.0.attn.relative_position_bias_table 13x13 -> 7x7, "
            "layers.3.blocks.0.attn.relative_position_bias_table 13x13 -> 3x3") in line
    grid = small.parameters_dict()["layers.2.blocks.0.attn.relative_position_bias_table"].asnumpy().reshape(7, 7)
    assert (grid[3] == 6.0).all() and (np.diff(grid[:, 3]) > 0).all()  # the centre row is dy = 6; dy grows down
    assert np.isfinite(small.set_train(False)(x).asnumpy()).all()
    # an official .pth goes through the same resize (the fixture is 64²: 4x4 patches of 16)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        slab_ms.create_model("deit_small_prepbn", num_classes=10, image_size=32, embed_dim=48, depth=2, num_heads=3,
                             checkpoint_path=os.path.join(ROOT, "tests", "fixtures", "official_small_deit_prepbn.pth"))
    assert "resized 1 position table(s) to this model's grids (bicubic, as the reference's fine-tuning): pos_embed " \
           "4x4 -> 2x2" in caplog.text
