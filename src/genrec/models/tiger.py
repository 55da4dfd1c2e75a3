"""TIGER: a T5-style encoder-decoder over semantic-ID tokens (Rajput et al., NeurIPS'23).

The encoder reads a user token and the history's semantic-ID tokens; the decoder generates the
next item's codes. Parameter layout mirrors `transformers.T5ForConditionalGeneration` (relative
position buckets, unscaled attention, scale-only norms, tied and rescaled output embedding), so
`to_hf_state_dict` loads into it unchanged and both produce the same logits.

Decoding is explicit: `encode` once per request, `cross_kv` once per request (shared by all
beams through broadcasting, never copied), then `decode_step` one token at a time with a small
per-beam self-attention cache.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.models.layers import RMSNorm, block_log_probs

NEG_INF = -1e9  # additive mask; finite so fully masked rows give uniform weights, not NaN


@dataclass
class TigerConfig:
    vocab_size: int
    d_model: int = 128
    num_heads: int = 6
    d_kv: int = 64
    d_ff: int = 1024
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    dropout: float = 0.1
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_eps: float = 1e-6
    pad_token_id: int = 0       # also the decoder start token, as in T5
    eos_token_id: int = 1

    def __post_init__(self):
        if self.vocab_size < 3 or self.d_model < 1 or self.num_heads < 1 or self.d_kv < 1:
            raise ValueError("invalid TigerConfig sizes")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's buckets: exact for small distances, logarithmic up to max_distance."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    large = max_exact + (torch.log(relative.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative, large)


class RelativePositionBias(nn.Module):
    def __init__(self, config: TigerConfig, bidirectional: bool):
        super().__init__()
        self.config, self.bidirectional = config, bidirectional
        self.embedding = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)

    def forward(self, q_len: int, k_len: int, q_offset: int = 0) -> torch.Tensor:
        """(1, heads, q_len, k_len) additive bias."""
        device = self.embedding.weight.device
        q_pos = torch.arange(q_len, device=device)[:, None] + q_offset
        k_pos = torch.arange(k_len, device=device)[None, :]
        bucket = relative_position_bucket(k_pos - q_pos, self.bidirectional,
                                          self.config.relative_attention_num_buckets,
                                          self.config.relative_attention_max_distance)
        return self.embedding(bucket).permute(2, 0, 1).unsqueeze(0).contiguous()


class Attention(nn.Module):
    def __init__(self, config: TigerConfig):
        super().__init__()
        inner = config.num_heads * config.d_kv
        self.heads, self.d_kv, self.dropout = config.num_heads, config.d_kv, config.dropout
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:  # (N, T, H*dk) -> (N, H, T, dk)
        return x.view(*x.shape[:-1], self.heads, self.d_kv).transpose(-3, -2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:  # (N, H, T, dk) -> (N, T, H*dk)
        return x.transpose(-3, -2).flatten(-2)

    def forward(self, x, k, v, bias) -> torch.Tensor:
        """x: (N, T, d); k, v: (N, H, S, dk) or broadcastable; bias: additive, broadcastable."""
        out = attention(self.split(self.q(x)), k, v, bias, self.dropout if self.training else 0.0)
        return self.o(self.merge(out))


class FeedForward(nn.Module):
    def __init__(self, config: TigerConfig):
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.wo(self.dropout(F.relu(self.wi(x), inplace=True)))  # in place: saves a pass over d_ff


class EncoderLayer(nn.Module):
    def __init__(self, config: TigerConfig):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(config.d_model, config.layer_norm_eps), Attention(config)
        self.ff_norm, self.ff = RMSNorm(config.d_model, config.layer_norm_eps), FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, bias):
        h = self.attn_norm(x)
        x = x + self.dropout(self.attn(h, self.attn.split(self.attn.k(h)), self.attn.split(self.attn.v(h)), bias))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: TigerConfig):
        super().__init__()
        self.self_norm, self.self_attn = RMSNorm(config.d_model, config.layer_norm_eps), Attention(config)
        self.cross_norm, self.cross_attn = RMSNorm(config.d_model, config.layer_norm_eps), Attention(config)
        self.ff_norm, self.ff = RMSNorm(config.d_model, config.layer_norm_eps), FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, self_bias, cross_k, cross_v, cross_bias):
        """Teacher-forced pass over whole decoder sequences (training)."""
        h = self.self_norm(x)
        k, v = self.self_attn.split(self.self_attn.k(h)), self.self_attn.split(self.self_attn.v(h))
        x = x + self.dropout(self.self_attn(h, k, v, self_bias))
        x = x + self.dropout(self.cross_attn(self.cross_norm(x), cross_k, cross_v, cross_bias))
        return x + self.dropout(self.ff(self.ff_norm(x)))

    def step(self, x, self_bias, cross_k, cross_v, cross_bias, cache: list):
        """One new token per beam. x (B, W, d); cache [k, v] of (B, W, H, t, dk), extended in place.
        Cross-attention puts the W beams where a sequence's queries would go, so all beams of a
        request read the request's single copy of the encoder keys (no broadcast copies)."""
        b, w, _ = x.shape
        sa, ca = self.self_attn, self.cross_attn
        h = self.self_norm(x)
        q, k, v = (proj(h).view(b, w, sa.heads, 1, sa.d_kv) for proj in (sa.q, sa.k, sa.v))
        if cache:
            k, v = torch.cat([cache[0], k], dim=-2), torch.cat([cache[1], v], dim=-2)
        cache[:] = [k, v]
        x = x + sa.o(few_key_attention(q, k, v, self_bias).view(b, w, -1))
        q = ca.q(self.cross_norm(x)).view(b, w, ca.heads, ca.d_kv).transpose(1, 2)   # (B, H, W, dk)
        out = attention(q, cross_k, cross_v, cross_bias)
        x = x + ca.o(out.transpose(1, 2).reshape(b, w, -1))
        return x + self.ff(self.ff_norm(x))


def few_key_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A beam's one query over its own 1-4 decoder keys: q (..., H, 1, dk), k/v (..., H, t, dk),
    bias (1, H, 1, t). Elementwise products instead of B*W*H tiny matmuls: 1.5x faster eager, and
    torch.compile fuses it into one pass. Returns (..., H, dk)."""
    scores = (q * k).sum(-1, dtype=torch.float32) + bias.squeeze(-2)
    return (torch.softmax(scores, dim=-1).unsqueeze(-1) * v).sum(-2).to(v.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
              dropout: float = 0.0) -> torch.Tensor:
    """T5 attention: q.k unscaled (the scale is folded into the initialisation), softmax in fp32,
    dropout on the weights. Plain matmuls beat SDPA's fused CPU kernel at TIGER's shapes: 1.5x
    for the encoder and 1.5-4x for decoding's few queries (one per beam over its 1-4 own keys, a
    request's W beams over its encoder keys), most in bf16 (benchmarks/decode.py)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() + bias
    weights = torch.softmax(scores, dim=-1)
    if dropout:  # a branch, not F.dropout(training=dropout > 0): that bool breaks torch.compile's graph
        weights = F.dropout(weights, dropout)
    return torch.matmul(weights.to(v.dtype), v)


class Tiger(nn.Module):
    decoding_hot_paths = ("encode_layers", "decode_step")  # what `runtime.compile_for_decoding` compiles

    def __init__(self, config: TigerConfig):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder_layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_decoder_layers))
        self.encoder_bias = RelativePositionBias(config, bidirectional=True)
        self.decoder_bias = RelativePositionBias(config, bidirectional=False)
        self.encoder_norm = RMSNorm(config.d_model, config.layer_norm_eps)
        self.decoder_norm = RMSNorm(config.d_model, config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        # T5's initialisation (it carries the attention scale T5 leaves out of q.k).
        d, dk, h, c = self.config.d_model, self.config.d_kv, self.config.num_heads, self.config
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1.0)
        elif isinstance(module, Attention):
            nn.init.normal_(module.q.weight, std=(d * dk) ** -0.5)
            for lin in (module.k, module.v):
                nn.init.normal_(lin.weight, std=d ** -0.5)
            nn.init.normal_(module.o.weight, std=(h * dk) ** -0.5)
        elif isinstance(module, FeedForward):
            nn.init.normal_(module.wi.weight, std=d ** -0.5)
            nn.init.normal_(module.wo.weight, std=c.d_ff ** -0.5)

    def _key_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, S) 1/0 -> (N, 1, 1, S) additive, in the model's dtype (SDPA wants them to match)."""
        return ((1.0 - attention_mask[:, None, None, :].float()) * NEG_INF).to(self.shared.weight.dtype)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).long()
        # Both additive biases are made here, outside `encode_layers` (what torch.compile sees):
        # compiled, the position buckets and their gather were redone for every score (+10 %), and
        # the key mask's int-to-float conversion, inlined into each softmax, unvectorised it (2x).
        length = input_ids.shape[1]
        return self.encode_layers(input_ids, self.encoder_bias(length, length), self._key_mask(attention_mask))

    def encode_layers(self, input_ids: torch.Tensor, position_bias: torch.Tensor,
                      key_mask: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.shared(input_ids))
        bias = position_bias + key_mask
        for layer in self.encoder_layers:
            x = layer(x, bias)
        return self.dropout(self.encoder_norm(x))

    def cross_kv(self, encoded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per decoder layer, the cross-attention keys and values (B, H, S, dk): computed once per
        request, every layer's in one matmul and one copy into the heads-first layout, where the
        per-step attention reads them without copies (keys as a transposed operand)."""
        layers = [layer.cross_attn for layer in self.decoder_layers]
        weight = torch.cat([w for attn in layers for w in (attn.k.weight, attn.v.weight)])
        b, s, _ = encoded.shape
        kv = (encoded @ weight.T).view(b, s, 2 * len(layers), layers[0].heads, layers[0].d_kv)
        kv = kv.permute(2, 0, 3, 1, 4).contiguous()                       # (2L, B, H, S, dk)
        return [(kv[2 * i], kv[2 * i + 1]) for i in range(len(layers))]

    def _head_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.decoder_norm(x)) * self.config.d_model ** -0.5  # T5's tied-head rescale

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._head_input(x) @ self.shared.weight.T

    def decode(self, decoder_input_ids, encoded, attention_mask=None) -> torch.Tensor:
        """Teacher-forced decoder pass (training): logits (N, T, vocab)."""
        if attention_mask is None:
            attention_mask = torch.ones(encoded.shape[:2], dtype=torch.long, device=encoded.device)
        t = decoder_input_ids.shape[1]
        causal = torch.full((t, t), NEG_INF, device=encoded.device, dtype=encoded.dtype).triu(1)
        self_bias = self.decoder_bias(t, t) + causal
        cross_bias = self._key_mask(attention_mask)
        x = self.dropout(self.shared(decoder_input_ids))
        for layer, (k, v) in zip(self.decoder_layers, self.cross_kv(encoded)):
            x = layer(x, self_bias, k, v, cross_bias)
        return self._logits(x)

    def forward(self, input_ids, attention_mask, decoder_input_ids) -> torch.Tensor:
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask)

    def decode_step(self, token: torch.Tensor, position: int, cross: list, cross_bias: torch.Tensor,
                    cache: list[list], level: slice | None = None) -> torch.Tensor:
        """One decoder token per beam. token (B, W); cross: per layer (k, v) of shape (B, H, S, dk),
        computed once per request by `cross_kv`; cross_bias (B, 1, 1, S) from `_key_mask`; cache:
        per layer list [k, v] of shape (B, W, H, position, dk), extended in place.
        Returns logits (B, W, vocab), or with `level` the fp32 log-probabilities (normalised over
        the whole vocabulary) of that block of it."""
        x = self.shared(token)
        self_bias = self.decoder_bias(1, position + 1, q_offset=position)  # causal by construction
        for layer, (k, v), layer_cache in zip(self.decoder_layers, cross, cache):
            x = layer.step(x, self_bias, k, v, cross_bias, layer_cache)
        if level is None:
            return self._logits(x)
        return block_log_probs(self._head_input(x), self.shared.weight, level)


def to_hf_state_dict(model: Tiger) -> dict[str, torch.Tensor]:
    """Our parameters under `T5ForConditionalGeneration` names."""
    sd, out = model.state_dict(), {}
    out["shared.weight"] = sd["shared.weight"]
    out["encoder.embed_tokens.weight"] = out["decoder.embed_tokens.weight"] = out["lm_head.weight"] = sd["shared.weight"]
    out["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = sd["encoder_bias.embedding.weight"]
    out["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = sd["decoder_bias.embedding.weight"]
    out["encoder.final_layer_norm.weight"] = sd["encoder_norm.weight"]
    out["decoder.final_layer_norm.weight"] = sd["decoder_norm.weight"]
    for i in range(model.config.num_encoder_layers):
        p, q = f"encoder_layers.{i}.", f"encoder.block.{i}.layer."
        for n in "qkvo":
            out[f"{q}0.SelfAttention.{n}.weight"] = sd[f"{p}attn.{n}.weight"]
        out[f"{q}0.layer_norm.weight"] = sd[f"{p}attn_norm.weight"]
        out[f"{q}1.DenseReluDense.wi.weight"] = sd[f"{p}ff.wi.weight"]
        out[f"{q}1.DenseReluDense.wo.weight"] = sd[f"{p}ff.wo.weight"]
        out[f"{q}1.layer_norm.weight"] = sd[f"{p}ff_norm.weight"]
    for i in range(model.config.num_decoder_layers):
        p, q = f"decoder_layers.{i}.", f"decoder.block.{i}.layer."
        for n in "qkvo":
            out[f"{q}0.SelfAttention.{n}.weight"] = sd[f"{p}self_attn.{n}.weight"]
            out[f"{q}1.EncDecAttention.{n}.weight"] = sd[f"{p}cross_attn.{n}.weight"]
        out[f"{q}0.layer_norm.weight"] = sd[f"{p}self_norm.weight"]
        out[f"{q}1.layer_norm.weight"] = sd[f"{p}cross_norm.weight"]
        out[f"{q}2.DenseReluDense.wi.weight"] = sd[f"{p}ff.wi.weight"]
        out[f"{q}2.DenseReluDense.wo.weight"] = sd[f"{p}ff.wo.weight"]
        out[f"{q}2.layer_norm.weight"] = sd[f"{p}ff_norm.weight"]
    return out


def hf_config(config: TigerConfig):
    """The equivalent `transformers.T5Config`."""
    from transformers import T5Config

    return T5Config(vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
                    num_layers=config.num_encoder_layers, num_decoder_layers=config.num_decoder_layers,
                    num_heads=config.num_heads, dropout_rate=config.dropout,
                    relative_attention_num_buckets=config.relative_attention_num_buckets,
                    relative_attention_max_distance=config.relative_attention_max_distance,
                    layer_norm_epsilon=config.layer_norm_eps, feed_forward_proj="relu",
                    pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id,
                    decoder_start_token_id=config.pad_token_id)


def to_hf(model: Tiger):
    """A `T5ForConditionalGeneration` holding this model's weights (the baseline and test oracle)."""
    from transformers import T5ForConditionalGeneration

    hf = T5ForConditionalGeneration(hf_config(model.config))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    if unexpected or [m for m in missing if "embed_tokens" not in m and m != "lm_head.weight"]:
        raise RuntimeError(f"T5 weight mapping is incomplete: missing={missing} unexpected={unexpected}")
    return hf.eval()


__all__ = ["Tiger", "TigerConfig", "to_hf", "to_hf_state_dict", "hf_config", "asdict"]
