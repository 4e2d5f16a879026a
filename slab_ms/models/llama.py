"""A LLaMA-style decoder with RMSNorm, RepBN or PRepBN (paper Sec. 5.3: PRepBN for language models).

The layout and the state-dict names are those of the reference PRepBN LLaMA (``LlamaForCausalLM`` with
``model.embed_tokens``, ``model.layers.<i>.{input_layernorm, self_attn, post_attention_layernorm, mlp}``,
``model.norm``, ``lm_head``): rotary position embeddings, causal softmax attention, a SwiGLU MLP, bias-free
projections, tied or untied embeddings. ``norm=`` picks the token norm:

* ``"rmsnorm"``: the LLaMA baseline;
* ``"repbn"``: RepBN whose training statistics leave out the padding (:class:`~slab_ms.layers.MaskedRepBN`);
* ``"prepbn"``: γ·RMSNorm + (1 − γ)·RepBN while training, pure RepBN in evaluation, γ from the model's one
  :class:`~slab_ms.layers.PRepBNSchedule` (advanced per optimizer step by ``TrainStep`` or ``GammaDecay``).

Padding: ``attention_mask`` (B, T), 1 for a real token, keeps padded keys out of attention and, in training,
padded tokens out of the BatchNorm statistics. ``bn_pad_mask="all"`` (default) applies the mask in every norm;
``"final"`` reproduces the reference file, whose decoder layers call their norms without it (padded tokens
enter those layers' statistics) and whose final norm alone is mask-aware.

Generation: :func:`generate` (or a :class:`GreedyGenerator`, which keeps its compiled graphs between calls) runs
greedy decoding either with a key/value cache (static shapes: a cache preallocated for the whole output, the new
rows scattered in at a position index, the head on the last position only, so one graph serves every step) or
without (the whole fixed-length buffer each step). In evaluation every norm is an affine map, and the deploy form
(``slab_ms.reparameterize_model``) folds input norm → q, k, v; post-attention norm → gate, up; final norm →
lm head (which becomes untied and gains a bias), so the deployed decoder computes no normalization.

This family is not a MindCV vision model and is not in MindCV's registry: build it with
:func:`create_llama` from a named config of :data:`CONFIGS` or a config dict (the reference ``config.json``
keys are accepted). Reference checkpoints load with ``slab_ms.weights.llama.load_official_llama``: names by the
cell types as for the vision models, and :func:`checkpoint_filter` here for what the reference keeps besides.
"""
import dataclasses
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import Normal

from ..layers import (Dense, attach_prepbn_schedule, float32_softmax, fold_norm_into_consumers, get_masked_norm_layer,
                      register_fold)
from ..layers.prepbn_schedule import advance_in_training
from ..weights.official import drop_keys

__all__ = ["LlamaConfig", "LlamaForCausalLM", "LlamaModel", "LlamaDecoderLayer", "LlamaAttention", "LlamaMLP",
           "CONFIGS", "CausalLMLoss", "create_llama", "generate", "GreedyGenerator", "checkpoint_filter",
           "test_configs"]

_NEG = float(np.finfo(np.float32).min)


@dataclasses.dataclass
class LlamaConfig:
    """Sizes and options of a decoder; the field names are the reference ``config.json``'s where it has them.

    The defaults are the released llama-350M (``CONFIGS["llama_350m"]``): the reference's config.json, and
    its LinearNorm defaults for the γ schedule (T = 18,000 after 10,000 RMSNorm-only steps), the schedule a
    config.json without these keys gets."""
    vocab_size: int = 32000
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 18
    num_attention_heads: int = 8
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    norm: str = "prepbn"
    prepbn_decay_steps: int = 18000
    prepbn_warmup_steps: int = 10000
    bn_pad_mask: str = "all"
    bn_zero_init: bool = True

    # Keys of a transformers config.json that say nothing about the computation.
    IGNORED_KEYS = ("architectures", "auto_map", "model_type", "torch_dtype", "transformers_version", "use_cache",
                    "_name_or_path", "pretraining_tp", "rope_scaling")

    @classmethod
    def from_dict(cls, values):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in values if k not in fields and k not in cls.IGNORED_KEYS)
        if unknown:
            raise ValueError(f"unknown LLaMA config key(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        return cls(**{k: v for k, v in values.items() if k in fields})

    def validate(self):
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"hidden_size {self.hidden_size} must split into {self.num_attention_heads} heads of an "
                             "even size (rotary embeddings rotate pairs of channels)")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act '{self.hidden_act}' is not supported; LLaMA's SwiGLU uses 'silu'")
        if self.norm not in ("rmsnorm", "repbn", "prepbn"):
            raise ValueError(f"Unknown norm '{self.norm}'; choose one of 'rmsnorm', 'repbn', 'prepbn'.")
        if self.bn_pad_mask not in ("all", "final"):
            raise ValueError(f"bn_pad_mask must be 'all' (every norm leaves out padding) or 'final' (the reference's "
                             f"behaviour: only the final norm does), got '{self.bn_pad_mask}'")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "max_position_embeddings"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self


# The reference's llama-350M (vocab 32000 sentencepiece, untied: LlamaConfig's defaults); the tiny config of the
# parity fixture; the corpus demo's byte-level decoder.
CONFIGS = {
    "llama_350m": {},
    "llama_tiny": dict(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6,
                       tie_word_embeddings=False, norm="prepbn", prepbn_decay_steps=18000, prepbn_warmup_steps=0),
    "llama_demo": dict(vocab_size=259, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                       num_attention_heads=4, max_position_embeddings=512, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, norm="prepbn", prepbn_decay_steps=1000, prepbn_warmup_steps=0),
}
test_configs = {"llama_tiny": {}}


# --------------------------------------------------------------------------------------------------- cells
def _dense(cin, cout, std):
    return Dense(cin, cout, has_bias=False, weight_init=Normal(std))


def rope_tables(head_dim, max_positions, base=10000.0):
    """``cos, sin`` (max_positions, head_dim) float32 of rotary embeddings, computed as the reference does
    (float32 inverse frequencies, each repeated for both halves)."""
    inv_freq = (1.0 / (np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))))
    inv_freq = inv_freq.astype(np.float32)
    freqs = np.outer(np.arange(max_positions, dtype=np.float32), inv_freq).astype(np.float32)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32), inv_freq


def signed_sin(sin):
    """``sin`` with the first half of its last axis negated (the sign rotate_half puts on the swapped half)."""
    half = sin.shape[-1] // 2
    return np.concatenate([-sin[..., :half], sin[..., half:]], axis=-1)


def _swap_halves(x):
    """The two halves of the last axis swapped: with the first half of ``sin`` negated (:func:`rope_tables`'s
    ``sin_signed``), ``x · cos + swap(x) · sin_signed`` is the reference's ``x · cos + rotate_half(x) · sin``
    (the same numbers: a sign moved from x to sin), by a Split instead of two StridedSlices and a Neg."""
    first, second = ops.split(x, x.shape[-1] // 2, axis=-1)
    return ops.concat((second, first), axis=-1)


def _additive_mask(allowed):
    """0 where ``allowed``, float32's lowest value elsewhere: added to the scores, it does what masking them to
    that value does (any score of magnitude below 1e31 vanishes in the sum's rounding) with one Add."""
    return ops.select(allowed, ops.zeros(allowed.shape, ms.float32), ops.full(allowed.shape, _NEG, dtype=ms.float32))


class LlamaMLP(nn.Cell):
    """SwiGLU: down(silu(gate(x)) · up(x))."""

    def __init__(self, hidden_size, intermediate_size, std=0.02):
        super().__init__()
        self.gate_proj = _dense(hidden_size, intermediate_size, std)
        self.up_proj = _dense(hidden_size, intermediate_size, std)
        self.down_proj = _dense(intermediate_size, hidden_size, std)
        self.act = nn.SiLU()

    def construct(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaAttention(nn.Cell):
    """Causal multi-head softmax attention with rotary embeddings on q and k."""

    def __init__(self, hidden_size, num_heads, std=0.02):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.hidden_size = hidden_size
        self.scale = 1.0 / float(np.sqrt(self.head_dim))
        self.q_proj = _dense(hidden_size, hidden_size, std)
        self.k_proj = _dense(hidden_size, hidden_size, std)
        self.v_proj = _dense(hidden_size, hidden_size, std)
        self.o_proj = _dense(hidden_size, hidden_size, std)

    def _heads(self, x, b, t):
        return x.reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def project(self, x, cos, sin):
        """q, k (rotated) and v as (B, H, T, hd); ``cos`` / ``sin`` are (T, hd) for the tokens' positions,
        ``sin`` as :func:`signed_sin` gives it."""
        b, t, _ = x.shape
        q = self._heads(self.q_proj(x), b, t)
        k = self._heads(self.k_proj(x), b, t)
        v = self._heads(self.v_proj(x), b, t)
        q = q * cos + _swap_halves(q) * sin
        k = k * cos + _swap_halves(k) * sin
        return q, k, v

    def attend(self, q, k, v, mask):
        """softmax(q kᵀ/√d + ``mask``) v, heads merged and projected; ``mask`` (:func:`_additive_mask`) is 0 for
        an allowed key and float32's lowest value for an excluded one."""
        scores = ops.matmul(q, k.transpose(0, 1, 3, 2)).astype(ms.float32) * self.scale  # float32 under AMP too
        out = ops.matmul(float32_softmax(scores + mask, v.dtype), v)
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, t, self.hidden_size))

    def construct(self, x, cos, sin, mask):
        q, k, v = self.project(x, cos, sin)
        return self.attend(q, k, v, mask)


class LlamaDecoderLayer(nn.Cell):
    """x + attn(input_layernorm(x)), then + mlp(post_attention_layernorm(·)); the norms get ``mask`` in training."""

    def __init__(self, config, norm_layer):
        super().__init__()
        std = config.initializer_range
        self.input_layernorm = norm_layer(config.hidden_size)
        self.self_attn = LlamaAttention(config.hidden_size, config.num_attention_heads, std)
        self.post_attention_layernorm = norm_layer(config.hidden_size)
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size, std)

    def _norm(self, norm, x, mask):
        if self.training:
            return norm(x, mask)
        return norm(x)  # evaluation: running statistics for every token (and a folded norm is an Identity)

    def construct(self, x, cos, sin, attn_mask, mask=None):
        x = x + self.self_attn(self._norm(self.input_layernorm, x, mask), cos, sin, attn_mask)
        return x + self.mlp(self._norm(self.post_attention_layernorm, x, mask))

    def cached(self, x, cos, sin, attn_mask, slots, k_cache, v_cache):
        """One decoding call with a key/value cache (evaluation): the new tokens' k, v are written into the caches
        at ``slots`` ((B, H, S, 3) indices (batch, head, position) of each new row) and attention reads the whole
        cache, ``attn_mask`` (S, M) excluding the keys after each query's position."""
        q, k, v = self.self_attn.project(self.input_layernorm(x), cos, sin)
        k_cache = ops.tensor_scatter_update(k_cache, slots, k)
        v_cache = ops.tensor_scatter_update(v_cache, slots, v)
        x = x + self.self_attn.attend(q, k_cache, v_cache, attn_mask)
        return x + self.mlp(self.post_attention_layernorm(x)), k_cache, v_cache


class LlamaModel(nn.Cell):
    """Embedding, decoder layers and the final norm: ids (B, T) -> normalised hidden states (B, T, C)."""

    def __init__(self, config, norm_layer):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         embedding_table=Normal(config.initializer_range))
        if 0 <= config.pad_token_id < config.vocab_size:  # the padding token's embedding starts at 0
            table = self.embed_tokens.embedding_table.asnumpy()
            table[config.pad_token_id] = 0
            self.embed_tokens.embedding_table.set_data(Tensor(table))
        self.layers = nn.CellList([LlamaDecoderLayer(config, norm_layer) for _ in range(config.num_hidden_layers)])
        self.norm = norm_layer(config.hidden_size)
        head_dim = config.hidden_size // config.num_attention_heads
        cos, sin, self.inv_freq = rope_tables(head_dim, config.max_position_embeddings, config.rope_theta)
        self.cos, self.sin = Tensor(cos), Tensor(signed_sin(sin))
        self.mask_layers = config.bn_pad_mask == "all"
        self.max_positions = config.max_position_embeddings
        self.causal = Tensor(np.tril(np.ones((self.max_positions, self.max_positions), np.bool_)))

    def _attn_mask(self, t, attention_mask):
        """The additive attention mask, (T, T) or (B, 1, T, T) with padding: causal, padded keys excluded."""
        allowed = self.causal[:t, :t]
        if attention_mask is not None:
            allowed = ops.logical_and(allowed.expand_dims(0), attention_mask.astype(ms.bool_)[:, None, :])
            allowed = allowed.expand_dims(1)
        return _additive_mask(allowed)

    def embed(self, input_ids, attention_mask=None):
        """Embedded tokens and what every layer reads: cos, sin, the attention mask, the norms' mask."""
        t = input_ids.shape[1]
        x = self.embed_tokens(input_ids.astype(ms.int32))
        layer_mask = attention_mask if self.mask_layers else None
        return x, self.cos[:t], self.sin[:t], self._attn_mask(t, attention_mask), layer_mask

    def final_norm(self, x, attention_mask=None):
        if self.training:
            return self.norm(x, attention_mask)
        return self.norm(x)

    def construct(self, input_ids, attention_mask=None):
        x, cos, sin, attn_mask, layer_mask = self.embed(input_ids, attention_mask)
        for layer in self.layers:
            x = layer(x, cos, sin, attn_mask, layer_mask)
        return self.final_norm(x, attention_mask)

    def hidden_states(self, input_ids, attention_mask=None):
        """[embeddings, after layer 1, ..., after the last layer] (before the final norm), run layer by layer."""
        x, cos, sin, attn_mask, layer_mask = self.embed(input_ids, attention_mask)
        out = [x]
        for layer in self.layers:
            x = layer(x, cos, sin, attn_mask, layer_mask)
            out.append(x)
        return out


class LlamaForCausalLM(nn.Cell):
    """The decoder and its language-model head: ``construct(input_ids, attention_mask=None)`` -> logits (B, T, V)."""

    def __init__(self, config):
        super().__init__()
        config = config.validate()
        self.config = config
        norm_layer = get_masked_norm_layer(config.norm, eps=config.rms_norm_eps,
                                           decay_steps=config.prepbn_decay_steps,
                                           warmup_steps=config.prepbn_warmup_steps, zero_init=config.bn_zero_init)
        self.model = LlamaModel(config, norm_layer)
        self.tie_word_embeddings = bool(config.tie_word_embeddings)
        if not self.tie_word_embeddings:
            self.lm_head = _dense(config.hidden_size, config.vocab_size, config.initializer_range)
        attach_prepbn_schedule(self)

    def logits(self, h):
        if self.tie_word_embeddings:
            return ops.matmul(h, self.model.embed_tokens.embedding_table.transpose(1, 0))
        return self.lm_head(h)

    def construct(self, input_ids, attention_mask=None):
        logits = self.logits(self.model(input_ids, attention_mask))
        advance_in_training(self)
        return logits

    def no_weight_decay(self):
        return set()

    # ------------------------------------------------------------------------------------- cached decoding
    def init_cache(self, batch_size, length):
        """Zero key and value caches for ``length`` positions: two tuples of one (B, heads, length, head_dim) Tensor
        per layer (a tuple, so a decoding call passes each layer's cache through without stacking or slicing)."""
        c = self.config
        shape = (batch_size, c.num_attention_heads, length, c.hidden_size // c.num_attention_heads)
        zeros = [ops.zeros(shape, ms.float32) for _ in range(2 * c.num_hidden_layers)]
        return tuple(zeros[:c.num_hidden_layers]), tuple(zeros[c.num_hidden_layers:])

    def forward_cached(self, input_ids, position, k_cache, v_cache):
        """Evaluation with a key/value cache: ``input_ids`` (B, S) are the tokens at positions ``position`` ..
        ``position`` + S − 1 (``position`` an int32 scalar Tensor, so one graph serves every step); ``k_cache`` and
        ``v_cache`` are tuples from :meth:`init_cache`. Returns the logits of the last position (B, V), the one
        generation reads (the head runs on that position only), and the updated caches."""
        (b, s), (_, heads, m, _) = input_ids.shape, k_cache[0].shape
        positions = position + ops.arange(s, dtype=ms.int32)
        cos = ops.gather(self.model.cos, positions, 0)
        sin = ops.gather(self.model.sin, positions, 0)
        attn_mask = _additive_mask(ops.arange(m, dtype=ms.int32).expand_dims(0) <= positions.expand_dims(1))
        grid = (b, heads, s)
        slots = ops.stack((ops.arange(b, dtype=ms.int32).reshape(b, 1, 1).broadcast_to(grid),
                           ops.arange(heads, dtype=ms.int32).reshape(1, heads, 1).broadcast_to(grid),
                           positions.reshape(1, 1, s).broadcast_to(grid)), axis=-1)  # (B, H, S, 3)
        x = self.model.embed_tokens(input_ids.astype(ms.int32))
        new_k, new_v = (), ()
        for i, layer in enumerate(self.model.layers):
            x, k, v = layer.cached(x, cos, sin, attn_mask, slots, k_cache[i], v_cache[i])
            new_k = new_k + (k,)
            new_v = new_v + (v,)
        return self.logits(self.model.final_norm(x[:, -1:]))[:, 0], new_k, new_v


class CausalLMLoss(nn.Cell):
    """Mean next-token cross entropy of (B, T, V) logits against (B, T) labels (already shifted by one)."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size
        self.ce = nn.CrossEntropyLoss()

    def construct(self, logits, labels):
        return self.ce(logits.reshape(-1, self.vocab_size), labels.reshape(-1))


class _CachedStep(nn.Cell):
    """Compiles :meth:`LlamaForCausalLM.forward_cached` and returns the greedy next token of the last position."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, position, k_cache, v_cache):
        logits, k_cache, v_cache = self.model.forward_cached(input_ids, position, k_cache, v_cache)
        return ops.argmax(logits, dim=-1).astype(ms.int32), logits, k_cache, v_cache


class _FullStep(nn.Cell):
    """Greedy next token at ``position`` − 1 from one full pass over a fixed-length buffer (no cache)."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, position):
        logits = self.model(input_ids)
        last = ops.gather(logits, position - 1, 1)
        return ops.argmax(last, dim=-1).astype(ms.int32), last


class GreedyGenerator:
    """Greedy decoding of one model whose compiled step graphs are kept between calls (:func:`generate` builds a
    new one per call; the benchmark times the calls after the first). ``use_cache`` as in :func:`generate`."""

    def __init__(self, model, use_cache=True):
        self.model, self.use_cache = model, use_cache
        self.step = _CachedStep(model) if use_cache else _FullStep(model)

    def __call__(self, prompt_ids, max_new_tokens, return_stats=False):
        prompt = np.asarray(prompt_ids, np.int32)
        if prompt.ndim != 2 or prompt.shape[1] < 1:
            raise ValueError(f"prompt_ids must be (batch, length >= 1), got shape {prompt.shape}")
        model = self.model
        b, p = prompt.shape
        total = p + int(max_new_tokens)
        if total > model.config.max_position_embeddings:
            raise ValueError(f"prompt {p} + {max_new_tokens} new tokens exceed max_position_embeddings "
                             f"{model.config.max_position_embeddings}")
        was_training = model.training
        model.set_train(False)
        out = np.zeros((b, total), np.int32)
        out[:, :p] = prompt
        logits_seen = []
        start, timed = None, 0
        if self.use_cache:
            k_cache, v_cache = model.init_cache(b, total)
            begin = time.perf_counter()
            # mutable: the caches are graph inputs that change every call, not constants to compile in
            nxt, last, k_cache, v_cache = self.step(Tensor(prompt), Tensor(0, ms.int32), ms.mutable(k_cache),
                                                    ms.mutable(v_cache))
            out[:, p] = nxt.asnumpy()
            prefill = time.perf_counter() - begin
            logits_seen.append(last.asnumpy())
            for i in range(p + 1, total):
                if i == p + 2:  # the call at position p compiled the single-token graph
                    start = time.perf_counter()
                timed += start is not None
                nxt, last, k_cache, v_cache = self.step(Tensor(out[:, i - 1:i]), Tensor(i - 1, ms.int32),
                                                        ms.mutable(k_cache), ms.mutable(v_cache))
                out[:, i] = nxt.asnumpy()
                logits_seen.append(last.asnumpy())
        else:
            for i in range(p, total):
                if i == p + 1:  # the first call compiled the graph
                    start = time.perf_counter()
                timed += start is not None
                begin = time.perf_counter()
                nxt, last = self.step(Tensor(out), Tensor(i, ms.int32))
                out[:, i] = nxt.asnumpy()
                if i == p:
                    prefill = time.perf_counter() - begin
                logits_seen.append(last.asnumpy())
        elapsed = time.perf_counter() - start if start is not None else float("nan")
        model.set_train(was_training)
        if not return_stats:
            return out
        return out, dict(prefill_seconds=prefill, seconds=elapsed, timed_tokens=timed,
                         tokens_per_s=b * timed / elapsed if timed and elapsed > 0 else float("nan"),
                         last_logits=np.stack(logits_seen, axis=1))


def generate(model, prompt_ids, max_new_tokens, use_cache=True, return_stats=False):
    """Greedy continuation of ``prompt_ids`` (B, P) by ``max_new_tokens`` tokens, in evaluation mode.

    With ``use_cache`` a key/value cache of P + ``max_new_tokens`` positions is filled by one pass over the prompt
    (which gives the first new token), then one token per call; without it every step runs the decoder over the
    whole (B, P + N) buffer, whose unwritten positions cannot reach earlier ones through causal attention. Returns
    the ids (B, P + N) as numpy int32, and with ``return_stats`` also ``dict(prefill_seconds, seconds,
    timed_tokens, tokens_per_s, last_logits)``: ``prefill_seconds`` is the call that chose the first new token (the
    prompt's pass; it includes compiling on a fresh :class:`GreedyGenerator`); the calls that compile a graph (the
    prompt's and the first single-token call; the first full pass) are left out of ``seconds``, so
    ``timed_tokens`` is N − 2 with the cache and N − 1 without; ``last_logits`` (B, N, V) are the logits that chose
    each new token.
    """
    return GreedyGenerator(model, use_cache)(prompt_ids, max_new_tokens, return_stats)


# --------------------------------------------------------------------------------------------------- folds
@register_fold(LlamaDecoderLayer)
def _fold_layer(layer):
    """input_layernorm → q, k, v; post_attention_layernorm → gate, up (each projection gains a bias)."""
    attn, mlp = layer.self_attn, layer.mlp
    fold_norm_into_consumers(layer, "input_layernorm", [(attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj")])
    fold_norm_into_consumers(layer, "post_attention_layernorm", [(mlp, "gate_proj"), (mlp, "up_proj")])


@register_fold(LlamaForCausalLM)
def _fold_head(model):
    """Final norm → lm_head; a tied head first becomes a Dense of its own holding a copy of the embedding."""
    if not hasattr(model.model.norm, "affine"):
        return  # RMSNorm: per-token statistics, no fixed map
    if model.tie_word_embeddings:
        c = model.config
        table = model.model.embed_tokens.embedding_table.asnumpy()
        model.lm_head = Dense(c.hidden_size, c.vocab_size, has_bias=False, weight_init=Tensor(table.copy()))
        model.tie_word_embeddings = False
        model.config = dataclasses.replace(c, tie_word_embeddings=False)
    fold_norm_into_consumers(model.model, "norm", [(model, "lm_head")])


# ----------------------------------------------------------------------------------------------- factory
def create_llama(name_or_config="llama_tiny", **kwargs):
    """A :class:`LlamaForCausalLM` from a name of :data:`CONFIGS`, a config dict (e.g. the reference ``config.json``
    read with ``json.load``) or a :class:`LlamaConfig`; ``kwargs`` override single fields
    (e.g. ``norm="rmsnorm"``)."""
    if isinstance(name_or_config, LlamaConfig):
        values = dataclasses.asdict(name_or_config)
    elif isinstance(name_or_config, dict):
        values = dict(name_or_config)
    elif name_or_config in CONFIGS:
        values = dict(CONFIGS[name_or_config])
    else:
        raise ValueError(f"unknown LLaMA config '{name_or_config}'; choose one of {', '.join(CONFIGS)} or pass a dict")
    values.update({k: v for k, v in kwargs.items() if v is not None})
    return LlamaForCausalLM(LlamaConfig.from_dict(values))


# ------------------------------------------------------------------------------------ official checkpoints
# What the reference keeps and this code does not read (BatchNorm's batch counter aside, which every conversion
# drops): LinearNorm's micro-step counter (its schedule moved once per 16 forwards; ours counts optimizer steps),
# and the rotary inverse frequencies (recomputed; checked against the checkpoint's below).
_DROPPED = [(r"(^|\.)num_step$", "the reference's forward counter (mod 16); γ counts optimizer steps here"),
            (r"\.rotary_emb\.inv_freq$", "rotary inverse frequencies, recomputed from rope_theta")]


def checkpoint_filter(state_dict, model):
    """What the reference keeps and this decoder does not read, dropped with a note each: ``(kept, notes,
    mismatched)``. Rotary frequencies that differ from this config's, and a tied model's ``lm_head.weight`` that
    is not the embedding, are mismatches."""
    state, mismatched, notes = dict(state_dict), [], []
    expected = model.model.inv_freq
    for key in [k for k in state if k.endswith(".rotary_emb.inv_freq")]:
        value = np.asarray(state[key], np.float32)
        if value.shape != expected.shape or not np.allclose(value, expected, rtol=1e-5, atol=1e-7):
            mismatched.append(f"{key}: rotary frequencies differ from rope_theta={model.config.rope_theta}, "
                              f"head_dim={2 * expected.size}")
    if model.tie_word_embeddings and "lm_head.weight" in state:
        if np.array_equal(np.asarray(state["lm_head.weight"]), np.asarray(state.get("model.embed_tokens.weight"))):
            state.pop("lm_head.weight")
            notes.append("dropped lm_head.weight: the same array as model.embed_tokens.weight (tied embeddings)")
        else:
            mismatched.append("lm_head.weight: differs from model.embed_tokens.weight, but this model ties them")
    state, dropped = drop_keys(state, _DROPPED)
    return state, notes + dropped, mismatched
