"""RepBN (Lemma 4.1), the PRepBN γ schedule and Simplified Linear Attention against naive formulas."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn, ops

from slab_ms.layers import (PRepBN, PRepBNSchedule, RepBN, SimplifiedLinearAttention, attach_prepbn_schedule, gamma,
                            get_norm_layer)
from parity_utils import gamma_at

RNG = np.random.default_rng(0)


def _randomise_bn(bn, dim, rng):
    bn.moving_mean.set_data(Tensor(rng.normal(0, 0.5, dim).astype(np.float32)))
    bn.moving_variance.set_data(Tensor(rng.uniform(0.5, 2.0, dim).astype(np.float32)))
    bn.gamma.set_data(Tensor(rng.uniform(0.5, 1.5, dim).astype(np.float32)))
    bn.beta.set_data(Tensor(rng.normal(0, 0.2, dim).astype(np.float32)))


def test_repbn_lemma_4_1_equals_bn_with_shifted_affine():
    dim, eta = 8, 0.7
    rep = RepBN(dim)
    _randomise_bn(rep.bn, dim, RNG)
    rep.alpha.set_data(Tensor(np.array([eta], np.float32)))
    rep.set_train(False)
    x = RNG.normal(size=(4, 10, dim)).astype(np.float32)

    bn = nn.BatchNorm1d(dim, eps=1e-5)
    sigma = np.sqrt(rep.bn.moving_variance.asnumpy() + 1e-5)
    mu = rep.bn.moving_mean.asnumpy()
    bn.gamma.set_data(Tensor(rep.bn.gamma.asnumpy() + eta * sigma))
    bn.beta.set_data(Tensor(rep.bn.beta.asnumpy() + eta * mu))
    bn.moving_mean.set_data(Tensor(mu))
    bn.moving_variance.set_data(rep.bn.moving_variance.value())
    bn.set_train(False)

    got = rep(Tensor(x)).asnumpy()
    expected = bn(Tensor(x.transpose(0, 2, 1))).asnumpy().transpose(0, 2, 1)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    a, b = rep.affine()
    np.testing.assert_allclose(got, x * a + b, atol=1e-5)
    assert not np.allclose(got, x * (a - eta) + b, atol=1e-3)  # η really contributes


def test_repbn_train_mode_statistics_match_pytorch_semantics():
    """BN over the B·N samples per channel; running = 0.9·running + 0.1·batch with unbiased variance."""
    dim = 6
    rep = RepBN(dim)
    rep.alpha.set_data(Tensor(np.array([0.3], np.float32)))
    rep.set_train(True)
    x = RNG.normal(1.0, 2.0, size=(3, 7, dim)).astype(np.float32)
    out = rep(Tensor(x)).asnumpy()
    flat = x.reshape(-1, dim)
    mean, var = flat.mean(0), flat.var(0)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5) + 0.3 * x, atol=1e-4)
    np.testing.assert_allclose(rep.bn.moving_mean.asnumpy(), 0.1 * mean, atol=1e-5)
    np.testing.assert_allclose(rep.bn.moving_variance.asnumpy(), 0.9 + 0.1 * flat.var(0, ddof=1), atol=1e-5)


class _TwoNorms(nn.Cell):
    """Two PRepBN layers sharing one model-level schedule."""

    def __init__(self, dim, decay_steps, warmup_steps):
        super().__init__()
        schedule = PRepBNSchedule(decay_steps, warmup_steps)
        self.a = PRepBN(dim, schedule)
        self.b = PRepBN(dim, schedule)
        attach_prepbn_schedule(self)

    def construct(self, x):
        return self.b(self.a(x))


class _StepThenNorm(nn.Cell):
    """A compiled 'train step': output of the norm at the current step, then step += 1 in-graph."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def construct(self, x):
        y = self.norm.a(x)
        ops.assign_add(self.norm.prepbn_step, ops.ones((), ms.int32))
        return y


def test_gamma_formula_matches_reference_sequence():
    # Reference LinearNorm(warm=2, step=4): LN, LN, 1, 3/4, 2/4, 1/4, 0, 0.
    assert [gamma_at(s, 4, 2) for s in range(8)] == [1, 1, 1, 0.75, 0.5, 0.25, 0, 0]
    assert gamma_at(60000, 60000) == 0.0 and gamma_at(59999, 60000) == pytest.approx(1 / 60000)
    # The same function evaluated on Tensors (as the layers do in-graph) gives the same values.
    steps = Tensor(np.arange(8, dtype=np.float32))
    np.testing.assert_allclose(gamma(steps, 4.0, 2.0).asnumpy(), [1, 1, 1, 0.75, 0.5, 0.25, 0, 0])


def test_gamma_inside_compiled_graph_follows_the_step_counter():
    dim = 5
    net = _TwoNorms(dim, decay_steps=4, warmup_steps=2)
    assert [n for n, _ in net.parameters_and_names()][:3] == ["prepbn_step", "prepbn_decay_steps",
                                                              "prepbn_warmup_steps"]
    norm = net.a
    norm.norm1.gamma.set_data(Tensor(RNG.uniform(0.5, 1.5, dim).astype(np.float32)))
    step_cell = _StepThenNorm(net)
    step_cell.set_train(True)
    x = RNG.normal(size=(2, 6, dim)).astype(np.float32)
    flat = x.reshape(-1, dim)
    ln = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6) * norm.norm1.gamma.asnumpy()
    bn = (x - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5) + x  # RepBN with batch statistics, η = 1
    for step in range(8):
        out = step_cell(Tensor(x)).asnumpy()
        g = gamma_at(step, 4, 2)
        np.testing.assert_allclose(out, g * ln + (1 - g) * bn, atol=1e-4, err_msg=f"step {step}")
    assert PRepBNSchedule.require(net).state() == {"step": 8, "decay_steps": 4, "warmup_steps": 2}
    # γ is exactly 0 once the decay has finished: the output is pure RepBN.
    norm.set_train(True)  # (set_train on the cell that is called: it sets that cell's compile phase)
    np.testing.assert_allclose(norm(Tensor(x)).asnumpy(), bn, atol=1e-4)
    # Evaluation is pure RepBN (running statistics) whatever the step.
    PRepBNSchedule.require(net).set(step=0)
    norm.set_train(False)
    a, b = norm.affine()
    np.testing.assert_allclose(norm(Tensor(x)).asnumpy(), x * a + b, atol=1e-5)


def test_schedule_rejects_zero_decay_steps_and_prepbn_needs_a_decay_length():
    with pytest.raises(ValueError, match="norm='repbn'"):
        PRepBNSchedule(0)
    with pytest.raises(ValueError, match="norm='repbn'"):
        PRepBNSchedule(10).set(decay_steps=0)
    with pytest.raises(ValueError, match="prepbn_decay_steps"):
        get_norm_layer("prepbn")


def test_schedule_checks_that_it_fits_the_run_and_that_it_finished():
    schedule = PRepBNSchedule(8, warmup_steps=2)
    assert schedule.check_fits(10) == 10
    with pytest.raises(ValueError, match="longer than the run"):
        schedule.check_fits(9)
    schedule.advance(9)
    assert schedule.check_fits(1) == 1 and schedule.gamma_value() == pytest.approx(1 / 8)
    with pytest.raises(RuntimeError, match="expected γ = 0"):
        schedule.verify_finished()
    schedule.advance()
    schedule.verify_finished(expected_step=10)
    assert schedule.check_fits(0) == 0


def _naive_sla(q, k, v, pos, heads, dwc_w, dwc_b, hw):
    """(ReLU(Q)ReLU(K)^T V) / (ReLU(Q)ReLU(K)^T 1 + 1e-6) per head, plus a depth-wise conv on V (numpy)."""
    b, n, c = q.shape
    d = c // heads
    k = k + pos
    out = np.zeros_like(q, dtype=np.float64)
    pad = dwc_w.shape[-1] // 2
    for bi in range(b):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            qh, kh, vh = np.maximum(q[bi, :, sl], 0), np.maximum(k[bi, :, sl], 0), v[bi, :, sl]
            sim = qh @ kh.T
            att = sim @ vh / (sim.sum(-1, keepdims=True) + 1e-6)
            grid = np.pad(vh.T.reshape(d, hw[0], hw[1]), ((0, 0), (pad, pad), (pad, pad)))
            conv = np.zeros((d, hw[0], hw[1]))
            for i in range(dwc_w.shape[-2]):
                for j in range(dwc_w.shape[-1]):
                    conv += dwc_w[:, 0, i, j][:, None, None] * grid[:, i:i + hw[0], j:j + hw[1]]
            conv += dwc_b[:, None, None]
            out[bi, :, sl] = att + conv.reshape(d, -1).T
    return out


@pytest.mark.parametrize("hw,dim,heads", [((4, 4), 64, 2), ((6, 5), 16, 2)], ids=["qk-first", "kv-first"])
def test_sla_equals_naive_formulation(hw, dim, heads):
    n = hw[0] * hw[1]
    sla = SimplifiedLinearAttention(dim, heads, hw)
    head_dim = dim // heads
    assert (n > head_dim) == (hw == (6, 5))  # each case exercises one association order
    pos = RNG.normal(0, 0.3, (1, n, dim)).astype(np.float32)
    sla.positional_encoding.set_data(Tensor(pos))
    q, k, v = (RNG.normal(size=(2, n, dim)).astype(np.float32) for _ in range(3))
    got = sla.attend(Tensor(q), Tensor(k), Tensor(v), hw).asnumpy()
    expected = _naive_sla(q, k, v, pos, heads, sla.dwc.weight.asnumpy(), sla.dwc.bias.asnumpy(), hw)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_sla_positional_encoding_is_resized_for_other_grids():
    sla = SimplifiedLinearAttention(16, 2, (4, 4))
    sla.positional_encoding.set_data(Tensor(RNG.normal(size=(1, 16, 16)).astype(np.float32)))
    x = Tensor(RNG.normal(size=(1, 64, 16)).astype(np.float32))
    assert sla(x, (8, 8)).shape == (1, 64, 16)


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_flop_count_restores_the_callers_execution_mode(mode):
    """count_flops runs its forward in PyNative mode (hooks) and gives the caller's mode back."""
    from slab_ms.layers.flops import count_flops
    ms.set_context(mode=mode)
    assert count_flops(nn.Dense(2, 3), 2, in_channels=1) == 2 * 2 * 2 * 3  # (1, 1, 2, 2) rows through 2 -> 3
    assert ms.get_context("mode") == mode
