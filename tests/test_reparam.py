"""Deploy form (slab_ms.reparameterize_model): same logits as the training form in eval, no norm left."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn

import slab_ms
from slab_ms.models import tiny_config
from slab_ms.layers import ChannelAffine, PatchEmbed, PRepBNSchedule, RepBN
from slab_ms.reparam import remaining_norms
from slab_ms.weights import load_checkpoint
from helpers import norm_cells, randomize, relative_error, tiny_input, tiny_model


@pytest.fixture
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def test_layernorm_baseline_keeps_and_reports_its_layernorms(pynative):
    net = tiny_model("deit_tiny_prepbn", norm="ln")
    x = tiny_input("deit_tiny_prepbn")
    deploy = slab_ms.reparameterize_model(net)
    # The exceptions: every LayerNorm (per-token statistics, no fixed map) stays and is reported.
    expected_left = [f"blocks.{i}.norm{j}" for i in range(2) for j in (1, 2)] + ["norm"]
    assert [name for name, _ in norm_cells(deploy)] == expected_left
    assert [(name, kind) for name, kind, _ in remaining_norms(deploy)] == [(n, "LayerNorm") for n in expected_left]
    assert all("per-token statistics" in reason for _, _, reason in remaining_norms(deploy))
    assert relative_error(deploy(x).asnumpy(), net(x).asnumpy()) <= 1e-4


def test_unregistered_owner_is_reported_not_skipped():
    class Wrapper(nn.Cell):  # a RepBN in a cell type that has no fold
        def __init__(self):
            super().__init__()
            self.norm = RepBN(4)

        def construct(self, x):
            return self.norm(x)

    left = remaining_norms(slab_ms.reparameterize_model(Wrapper()))
    assert left == [("norm", "RepBN", "no fold registered for its owner Wrapper")]


def test_headless_model_keeps_the_final_norm_as_an_exact_affine(pynative):
    net = randomize(slab_ms.create_model("slab_deit_tiny", num_classes=0, **tiny_config("slab_deit_tiny")))
    x = tiny_input("slab_deit_tiny")
    deploy = slab_ms.reparameterize_model(net)
    assert isinstance(deploy.norm, ChannelAffine) and norm_cells(deploy) == []
    assert relative_error(deploy(x).asnumpy(), net(x).asnumpy()) <= 1e-4


def test_patch_embed_fold_keeps_the_eta_times_bias_term(pynative):
    """The reference merge computes c' = α(c−μ)/σ + β and drops η·c; ours is c' = a⊙c + b."""
    embed = PatchEmbed(4, 3, 8, norm_layer=RepBN)
    randomize(embed)
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3, 16, 16), dtype=np.float32))
    expected = embed(x)[0].asnumpy()
    deploy = slab_ms.reparameterize_model(embed)
    assert isinstance(deploy.norm, nn.Identity)
    np.testing.assert_allclose(deploy(x)[0].asnumpy(), expected, atol=1e-5)
    bn, eta, c = embed.norm.bn, float(embed.norm.alpha.asnumpy()[0]), embed.proj.bias.asnumpy()
    sigma = np.sqrt(bn.moving_variance.asnumpy() + bn.eps)
    reference_merge = bn.gamma.asnumpy() * (c - bn.moving_mean.asnumpy()) / sigma + bn.beta.asnumpy()
    np.testing.assert_allclose(deploy.proj.bias.asnumpy(), reference_merge + eta * c, atol=1e-5)
    assert np.abs(eta * c).max() > 0.05  # so the reference's bias would be visibly wrong


@pytest.mark.parametrize("name", ["slab_deit_tiny", "swin_tiny_prepbn"])
def test_full_size_fold(name):
    net = randomize(slab_ms.create_model(name, num_classes=1000), weight_gain=0.5)
    x = Tensor(np.random.default_rng(3).standard_normal((1, 3, 224, 224), dtype=np.float32))
    expected = net(x).asnumpy()
    assert 1.0 < np.abs(expected).max() < 1e3
    deploy = slab_ms.reparameterize_model(net)
    assert norm_cells(deploy) == []
    assert relative_error(deploy(x).asnumpy(), expected) <= 1e-4


def test_folding_an_unfinished_schedule_warns_once_with_the_step_and_gamma(caplog, pynative):
    net = tiny_model("slab_deit_tiny")  # step 1 of T = 60000: γ ≈ 1, trained as LayerNorm so far
    with caplog.at_level("WARNING"):
        slab_ms.reparameterize_model(net)
        slab_ms.reparameterize_model(net)
    warnings = [r.getMessage() for r in caplog.records if "unfinished" in r.getMessage()]
    assert len(warnings) == 1 and "step 1 of warm-up 0 + T 60000, γ = 1.0000" in warnings[0]
    PRepBNSchedule.of(net).set(step=60000)
    assert PRepBNSchedule.of(net).unfinished() is None


def _mindcv_amp(net, level):
    from mindcv.utils.amp import auto_mixed_precision
    auto_mixed_precision(net, level)
    return net


def _mindspore_amp(net, level):
    return ms.amp.auto_mixed_precision(net, level)  # the whole network wrapped as well


def _model_amp(net, level):  # mindspore.Model casts and wraps the network it is given in place
    ms.Model(net, nn.CrossEntropyLoss(), nn.SGD(net.trainable_params(), 0.01), amp_level=level,
             loss_scale_manager=ms.FixedLossScaleManager(1024.0, drop_overflow_update=False))
    return net


@pytest.mark.parametrize("wrap, level", [(_mindcv_amp, "O1"), (_mindcv_amp, "O2"), (_mindspore_amp, "O2"),
                                         (_model_amp, "O2"), (_model_amp, "O3")])
def test_amp_wrapped_model_folds_in_float32_like_the_plain_model(pynative, tmp_path, wrap, level):
    """A model under MindCV's or MindSpore's AMP loads a plain checkpoint and folds, in float32, into the same
    plain float32 deploy network as the model without AMP (same logits within 1e-6 relative)."""
    name = "slab_deit_tiny"
    x = tiny_input(name)
    plain = tiny_model(name)
    expected_deploy = slab_ms.reparameterize_model(plain)
    ms.save_checkpoint(plain, str(tmp_path / "plain.ckpt"))
    wrapped = wrap(slab_ms.create_model(name, num_classes=10, **tiny_config(name)), level)
    load_checkpoint(wrapped, str(tmp_path / "plain.ckpt"))  # the loader reads the plain names through AMP
    assert any(type(cell).__name__.startswith("_OutputTo") for _, cell in wrapped.cells_and_names()) or level == "O3"
    assert [name for name, _, _ in remaining_norms(wrapped)] == [name for name, _, _ in remaining_norms(plain)]

    deploy = slab_ms.reparameterize_model(wrapped)
    assert remaining_norms(deploy) == [] and norm_cells(deploy) == []
    assert [(n, type(c)) for n, c in deploy.cells_and_names()] == [
        (n, type(c)) for n, c in expected_deploy.cells_and_names()]  # no wrapper left
    assert {getattr(c.mixed_precision_type, "name", None) for _, c in deploy.cells_and_names()} == {"FP32"}
    assert [p.name for p in deploy.get_parameters()] == [p.name for p in expected_deploy.get_parameters()]
    # the same float32 computation as the plain model's deploy form (both fold the same float32 weights)
    assert relative_error(deploy(x).asnumpy(), expected_deploy(x).asnumpy()) <= 1e-6
    assert relative_error(deploy(x).asnumpy(), plain(x).asnumpy()) <= 1e-4
