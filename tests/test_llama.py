"""PRepBN LLaMA: parity with the reference modelling file (tests/fixtures/small_llama_prepbn.npz, made by
tests/fixtures/make_llama_fixture.py), mask-aware BatchNorm statistics, the strict converter, the fold and
cached generation, and the corpus demo's quick mode."""
import os
import subprocess

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn, ops

from parity_utils import FIXTURES, load_fixture
from slab_ms import reparameterize_model
from slab_ms.experiments import lm_demo
from slab_ms.layers import MaskedPRepBN, MaskedRepBN, PRepBN, PRepBNSchedule, RMSNorm, TokenBatchNorm
from slab_ms.models.llama import (CONFIGS, GreedyGenerator, LlamaConfig, _additive_mask, _swap_halves, create_llama,
                                  generate, rope_tables, signed_sin)
from slab_ms.weights.official import official_parameters
from slab_ms.reparam import remaining_norms
from slab_ms.weights.llama import convert_llama_state_dict, load_official_llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = "small_llama_prepbn.npz"
TOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    data, meta = load_fixture(FIXTURE)
    return data, meta


def rel(a, b):
    b = np.asarray(b)
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def official_model(ref, **kwargs):
    data, meta = ref
    assert meta["config"]["hidden_size"] == CONFIGS["llama_tiny"]["hidden_size"]
    net = create_llama("llama_tiny", **kwargs)
    load_official_llama(net, f"{FIXTURES}/{FIXTURE}")
    return net


def ids_and_mask(ref):
    data, _ = ref
    return Tensor(data["__input_ids__"].astype(np.int32)), data["__attention_mask__"].astype(np.int32)


def bn_stats(net):
    """Reference name of every BN running statistic -> value."""
    return {src: param.asnumpy().copy() for _, (src, param) in official_parameters(net).items()
            if src.endswith(("running_mean", "running_var"))}


# ------------------------------------------------------------------------------------------- parity
def test_eval_logits_and_layers_match_reference(ref):
    data, _ = ref
    net = official_model(ref)
    assert PRepBNSchedule.of(net).state() == {"step": 18000, "decay_steps": 18000, "warmup_steps": 0}
    ids, mask = ids_and_mask(ref)
    net.set_train(False)
    assert rel(net(ids, Tensor(mask)).asnumpy(), data["__logits_eval__"]) < TOL
    hidden = net.model.hidden_states(ids, Tensor(mask))
    stored = sorted(k for k in data if k.startswith("__hidden_eval__."))
    assert stored, "the fixture holds per-layer hidden states"
    for key in stored:
        assert rel(hidden[int(key.rsplit(".", 1)[1])].asnumpy(), data[key]) < TOL, key


@pytest.mark.parametrize("with_mask", [True, False], ids=["all-ones-mask", "no-mask"])
def test_train_output_and_bn_statistics_without_padding(ref, with_mask):
    """γ = 0.5, batch statistics: the masked path (all-ones mask) and plain BatchNorm (no mask) both match."""
    data, _ = ref
    net = official_model(ref)
    PRepBNSchedule.of(net).set(step=9000)
    assert PRepBNSchedule.of(net).gamma_value() == 0.5
    ids, mask = ids_and_mask(ref)
    net.set_train(True)
    logits = net(ids, Tensor(np.ones_like(mask)) if with_mask else None).asnumpy()
    assert rel(logits, data["__logits_train_nopad__"]) < TOL
    stats = bn_stats(net)
    keys = [k for k in data if k.startswith("__bn_after_train_nopad__.")]
    assert len(keys) == 10
    for key in keys:
        name = key.split("__.", 1)[1]
        assert rel(stats[name], data[key]) < TOL, name
        assert rel(stats[name], data[name]) > 1e-3, f"{name} did not move"  # one step moved it by 10 %


def test_train_with_padding_in_reference_mode(ref):
    """bn_pad_mask='final' is the reference: its layer norms see the padding, its final norm does not."""
    data, _ = ref
    ids, mask = ids_and_mask(ref)
    results = {}
    for mode in ("final", "all"):
        net = official_model(ref, bn_pad_mask=mode)
        PRepBNSchedule.of(net).set(step=9000)
        net.set_train(True)
        results[mode] = (net(ids, Tensor(mask)).asnumpy(), bn_stats(net))
    logits, stats = results["final"]
    assert rel(logits, data["__logits_train_pad__"]) < TOL
    for key in (k for k in data if k.startswith("__bn_after_train_pad__.")):
        assert rel(stats[key.split("__.", 1)[1]], data[key]) < TOL, key
    # Masking every norm is a different computation (padded tokens leave the layers' statistics too).
    assert rel(results["all"][0], data["__logits_train_pad__"]) > 1e-3


# ------------------------------------------------------------------------------------------- masks
def test_masked_repbn_layer_statistics_over_real_tokens_only():
    rng = np.random.default_rng(0)
    bn = MaskedRepBN(6, eps=1e-6, zero_init=False)
    bn.alpha.set_data(Tensor(np.array([0.7], np.float32)))
    x = rng.standard_normal((2, 5, 6)).astype(np.float32) * 2 + 1
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], np.int32)
    bn.set_train(True)
    y = bn(Tensor(x), Tensor(mask)).asnumpy()
    real = x[mask.astype(bool)]  # (5, 6)
    mean, var = real.mean(0), real.var(0)
    expect = (x - mean) / np.sqrt(var + 1e-6) + 0.7 * x
    m = mask.astype(bool)
    np.testing.assert_allclose(y[m], expect[m], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[~m], 1.7 * x[~m], rtol=1e-6, atol=1e-6)  # padding: x + η·x as the reference
    np.testing.assert_allclose(bn.bn.moving_mean.asnumpy(), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.bn.moving_variance.asnumpy(), 0.9 + 0.1 * real.var(0, ddof=1), rtol=1e-5)
    bn.set_train(False)  # evaluation: running statistics for every token, padded or not
    y = bn(Tensor(x)).asnumpy()
    mm, mv = bn.bn.moving_mean.asnumpy(), bn.bn.moving_variance.asnumpy()
    np.testing.assert_allclose(y, (x - mm) / np.sqrt(mv + 1e-6) + 0.7 * x, rtol=1e-5, atol=1e-5)


def _randomised(net, seed):
    """Non-trivial BN weights, biases, statistics and η (a fresh LLaMA RepBN starts at 0)."""
    rng = np.random.default_rng(seed)
    for name, param in net.parameters_and_names():
        if name.endswith(("bn.gamma", "alpha")):
            param.set_data(Tensor(rng.uniform(0.5, 1.5, param.shape).astype(np.float32)))
        elif name.endswith(("bn.beta", "moving_mean")):
            param.set_data(Tensor(rng.normal(0, 0.3, param.shape).astype(np.float32)))
        elif name.endswith("moving_variance"):
            param.set_data(Tensor(rng.uniform(0.5, 2, param.shape).astype(np.float32)))
    return net


def test_padding_leaves_statistics_and_real_outputs_unchanged():
    """Train mode at γ = 0.5: appending padding (of any ids) to a batch changes neither the real tokens' logits
    nor any BN running statistic; in the reference mode, whose layer norms see the padding, both change."""
    rng = np.random.default_rng(1)
    real = rng.integers(3, 128, (2, 8)).astype(np.int32)
    padded = np.concatenate([real, rng.integers(0, 128, (2, 5)).astype(np.int32)], axis=1)
    mask = np.concatenate([np.ones((2, 8), np.int32), np.zeros((2, 5), np.int32)], axis=1)
    for mode in ("all", "final"):
        net = _randomised(create_llama("llama_tiny", bn_pad_mask=mode), 2)
        PRepBNSchedule.of(net).set(step=9000)
        net.set_train(True)
        start = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
        runs = []
        for ids, m in ((real, np.ones_like(real)), (padded, mask)):
            for p in net.get_parameters():
                ops.assign(p, Tensor(start[p.name]))
            runs.append((net(Tensor(ids), Tensor(m)).asnumpy()[:, :8], bn_stats(net)))
        (logits, stats), (logits_pad, stats_pad) = runs
        logit_diff = rel(logits_pad, logits)
        stat_diff = max(np.abs(stats[k] - stats_pad[k]).max() for k in stats)
        if mode == "all":
            assert logit_diff < 1e-5 and stat_diff < 1e-6, (logit_diff, stat_diff)
        else:
            assert logit_diff > 1e-4 and stat_diff > 1e-4, (logit_diff, stat_diff)


def test_gradients_reach_every_parameter_with_padding():
    net = _randomised(create_llama("llama_tiny"), 3)
    PRepBNSchedule.of(net).set(step=9000)
    net.set_train(True)
    ids = Tensor(np.random.default_rng(4).integers(3, 128, (2, 10)).astype(np.int32))
    mask = Tensor(np.array([[1] * 10, [1] * 6 + [0] * 4], np.int32))

    def loss_fn(x, m):
        return net(x, m).astype(ms.float32).square().mean()

    params = net.trainable_params()
    _, grads = ms.value_and_grad(loss_fn, None, params)(ids, mask)
    names = [p.name for p, g in zip(params, grads) if not np.abs(g.asnumpy()).max() > 0]
    assert not names, f"no gradient for {names}"


# ------------------------------------------------------------------------------------------- weights
def test_converter_is_strict(ref):
    data, _ = ref
    state = {k: v for k, v in data.items() if not k.startswith("__")}
    net = create_llama("llama_tiny")
    params, schedule, notes = convert_llama_state_dict(net, state)
    assert len(params) == len(list(net.trainable_params())) + 10  # + every BN's two running statistics
    assert schedule == (18000, 18000, 0) and any("inv_freq" in n for n in notes)
    broken = dict(state)
    broken.pop("model.layers.1.mlp.up_proj.weight")
    broken["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    broken["lm_head.weight"] = np.zeros((128, 32), np.float32)
    broken["model.layers.0.self_attn.rotary_emb.inv_freq"] = state["model.layers.0.self_attn.rotary_emb.inv_freq"] * 2
    with pytest.raises(ValueError) as err:
        convert_llama_state_dict(net, broken)
    text = str(err.value)
    for needle in ("missing in checkpoint (1): model.layers.1.mlp.up_proj.weight", "unexpected in checkpoint (1): "
                   "model.layers.0.extra.weight", "lm_head.weight: source (128, 32) vs model (128, 64)",
                   "rotary frequencies differ"):
        assert needle in text, text
    with pytest.raises(ValueError, match="norm='rmsnorm'"):
        convert_llama_state_dict(create_llama("llama_tiny", norm="rmsnorm"), state)


def test_named_configs_match_reference_config_json():
    official_350m = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
                     "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 4096,
                     "max_position_embeddings": 2048, "model_type": "llama", "num_attention_heads": 8,
                     "num_hidden_layers": 18, "pad_token_id": 0, "rms_norm_eps": 1e-06, "tie_word_embeddings": False,
                     "torch_dtype": "float16", "transformers_version": "4.28.1", "use_cache": False,
                     "vocab_size": 32000}
    named = LlamaConfig.from_dict(CONFIGS["llama_350m"])
    from_json = LlamaConfig.from_dict(official_350m)
    for key, value in official_350m.items():
        if hasattr(named, key):
            assert getattr(named, key) == value == getattr(from_json, key), key
    assert (named.prepbn_decay_steps, named.prepbn_warmup_steps) == (18000, 10000)
    with pytest.raises(ValueError, match="unknown LLaMA config key"):
        LlamaConfig.from_dict(dict(official_350m, hiden_size=3))
    with pytest.raises(ValueError, match="unknown LLaMA config"):
        create_llama("llama_7b")


# ------------------------------------------------------------------------------------------- fold
def _no_norm_left(net):
    kinds = (RMSNorm, TokenBatchNorm, PRepBN, nn.BatchNorm1d, nn.LayerNorm)
    return not remaining_norms(net) and not [n for n, c in net.cells_and_names() if isinstance(c, kinds)]


def test_fold_matches_eval_and_reference_merge_and_generation(ref):
    data, _ = ref
    net = official_model(ref)
    ids, mask = ids_and_mask(ref)
    net.set_train(False)
    logits = net(ids, Tensor(mask)).asnumpy()
    deploy = reparameterize_model(net)
    assert _no_norm_left(deploy) and PRepBNSchedule.of(deploy) is None
    assert deploy.model.layers[0].self_attn.q_proj.has_bias and deploy.lm_head.has_bias
    folded = deploy(ids, Tensor(mask)).asnumpy()
    assert rel(folded, logits) < TOL and rel(folded, data["__logits_merge__"]) < TOL
    prompt = data["__input_ids__"][:, :4]
    cached, stats = generate(net, prompt, 8, use_cache=True, return_stats=True)
    uncached, stats_full = generate(net, prompt, 8, use_cache=False, return_stats=True)
    deployed = generate(deploy, prompt, 8, use_cache=True)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(cached, deployed)
    assert rel(stats["last_logits"], stats_full["last_logits"]) < TOL
    assert np.array_equal(cached[:, :4], prompt) and len(set(cached[:, 4:].ravel().tolist())) > 1


def test_fold_of_a_tied_head_unties_it():
    net = _randomised(create_llama("llama_tiny", tie_word_embeddings=True, norm="repbn"), 5)
    assert not hasattr(net, "lm_head")
    ids = Tensor(np.random.default_rng(6).integers(3, 128, (2, 9)).astype(np.int32))
    net.set_train(False)
    logits = net(ids).asnumpy()
    table = net.model.embed_tokens.embedding_table.asnumpy().copy()
    deploy = reparameterize_model(net)
    assert _no_norm_left(deploy) and not deploy.tie_word_embeddings
    assert rel(deploy(ids).asnumpy(), logits) < TOL
    np.testing.assert_array_equal(deploy.model.embed_tokens.embedding_table.asnumpy(), table)


def test_rmsnorm_model_keeps_its_norms():
    net = create_llama("llama_tiny", norm="rmsnorm")
    assert PRepBNSchedule.of(net) is None
    deploy = reparameterize_model(net)
    assert len([c for _, c in deploy.cells_and_names() if isinstance(c, RMSNorm)]) == 5
    assert not [c for _, c in net.cells_and_names() if isinstance(c, (MaskedRepBN, MaskedPRepBN))]


# ------------------------------------------------------------------------------------------- generation
def test_rope_and_attention_mask_give_the_numbers_of_their_previous_formulation():
    """RoPE by swapped halves and a signed sin, and the additive mask, against rotate_half (two slices and a Neg)
    and masked_fill: the same float32 numbers, bit for bit."""
    rng = np.random.default_rng(7)
    cos, sin, _ = rope_tables(16, 12)
    x = rng.standard_normal((2, 3, 12, 16)).astype(np.float32) * 4
    rotate_half = np.concatenate([-x[..., 8:], x[..., :8]], axis=-1)
    new = (Tensor(x) * Tensor(cos) + _swap_halves(Tensor(x)) * Tensor(signed_sin(sin))).asnumpy()
    np.testing.assert_array_equal(new, (Tensor(x) * Tensor(cos) + Tensor(rotate_half) * Tensor(sin)).asnumpy())
    scores = Tensor(rng.standard_normal((2, 3, 12, 12)).astype(np.float32) * 30)
    allowed = Tensor(np.tril(np.ones((12, 12), np.bool_)) & (rng.random((2, 1, 1, 12)) > 0.3))
    masked = ops.masked_fill(scores, ops.logical_not(allowed), float(np.finfo(np.float32).min))
    np.testing.assert_array_equal(ops.softmax(scores + _additive_mask(allowed), -1).asnumpy(),
                                  ops.softmax(masked, -1).asnumpy())


@pytest.mark.parametrize("norm", ["rmsnorm", "prepbn"])
def test_cached_generation_matches_the_full_forward(norm):
    """Batch 2: each token the cache chose is the argmax of the full forward over the sequence so far, with the same
    logits; a generator called again (its graphs compiled) gives the same ids; without cache, the same ids."""
    net = _randomised(create_llama("llama_tiny", norm=norm, bn_zero_init=False, initializer_range=0.2), 8)
    net.set_train(False)
    prompt = np.random.default_rng(9).integers(3, 128, (2, 5)).astype(np.int32)
    generator = GreedyGenerator(net)
    ids, stats = generator(prompt, 7, return_stats=True)
    again, stats_again = generator(prompt, 7, return_stats=True)
    np.testing.assert_array_equal(ids, again)
    np.testing.assert_array_equal(ids, generate(net, prompt, 7, use_cache=False))
    full = net(Tensor(ids)).asnumpy()[:, 4:-1]  # the logits at positions P - 1 .. P + N - 2
    assert rel(stats["last_logits"], full) < TOL and rel(stats_again["last_logits"], full) < TOL
    np.testing.assert_array_equal(ids[:, 5:], full.argmax(-1))
    assert stats["timed_tokens"] == 5 and stats["prefill_seconds"] > 0 and stats_again["tokens_per_s"] > 0
    assert len(set(ids[:, 5:].ravel().tolist())) > 1


# ------------------------------------------------------------------------------------------- demo
def test_demo_quick_runs_and_reports():
    """The one command, in its own process (the demo sets MindSpore's CPU thread count, a per-process setting)."""
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_lm_demo.sh"), "--quick"], capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    summary = out[out.index("summary:"):]
    for norm in ("rmsnorm", "prepbn"):
        line = next(row for row in summary.splitlines() if row.strip().startswith(norm))
        assert "validation perplexity" in line and "tokens/s" in line
        ppl = float(line.split("validation perplexity ")[1].split(";")[0].split(",")[0])
        assert 1.0 < ppl < 259.0 * 4, line
    assert "folded (no norm cell left)" in out and "γ schedule finished" in out
    assert "step 24/24" in out and "PRepBN vs RMSNorm" in out
    comparison = next(row for row in summary.splitlines() if "PRepBN vs RMSNorm" in row)
    assert comparison.endswith("(--quick: 24 steps of a tiny model test that the demo runs; these numbers say nothing "
                               "about quality or speed)")


@pytest.mark.parametrize("argv, message", [(["--steps", "5"], "--steps must be >= 10"),
                                           (["--corpus", "/no/such/file.txt"], "is not a file"),
                                           (["--norms", "layernorm"], "--norms takes")])
def test_demo_bad_input_is_one_message_and_exit_2(capsys, argv, message):
    assert lm_demo.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lm_demo: error:") and message in err[0], err
