"""A Llama-style decoder over semantic-ID tokens (RMSNorm, RoPE, SwiGLU, grouped-query attention).

It reads a history as one token stream (each item = its semantic-ID tokens) and is trained with
next-token loss on every item's tokens, so one forward gives a training signal per position.
Parameter names are those of `transformers.LlamaForCausalLM` (minus the `model.` prefix), so
pretrained Llama/Qwen-style weights load directly and our weights load there.

Decoding: prefill the prompt once (`extend`, which may continue a cached prefix) and keep its KV;
`decode_step` attends beams to that shared prompt KV by broadcasting, plus each beam's own few
generated tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrec.models.layers import RMSNorm, block_log_probs

NEG_INF = -1e9


@dataclass
class CausalConfig:
    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 0               # 0 = hidden_size // num_heads
    intermediate_size: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    dropout: float = 0.1            # residual dropout (training only)
    embedding_dropout: float = 0.0  # on the input token embeddings (training only)
    attention_dropout: float = 0.0  # on the attention weights (training only)
    tie_word_embeddings: bool = False
    pad_token_id: int = 0
    bos_token_id: int = 1

    def __post_init__(self):
        if self.head_dim <= 0:
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")


def rope(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (*positions.shape, head_dim) in Llama's half-split layout, the sin's
    first half negated: `apply_rope` multiplies it by the input with its halves swapped."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=positions.device) / head_dim))
    freqs = positions[..., None].float() * inv_freq
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Llama's rotation, x * cos + rotate_half(x) * sin, with rotate_half(x) = (-x2, x1) as x's
    halves swapped times rope's signed sin: the same numbers. Eager, the swap is one roll (a
    prefix-cache hit's rotation 26 -> 12 us on a CPU, against slices, negation and cat); compiled,
    slices and a cat, which inductor fuses where its roll indexing made a full prefill 1.8x slower."""
    half = x.shape[-1] // 2
    if torch.compiler.is_compiling():
        swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    else:
        swapped = x.roll(half, dims=-1)
    return x * cos + swapped * signed_sin


class Attention(nn.Module):
    def __init__(self, config: CausalConfig):
        super().__init__()
        c = config
        self.heads, self.kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)

    fused: torch.Tensor | None = None   # q, k, v weights stacked by `CausalLM.fuse_for_inference`

    def qkv(self, x, cos, sin):
        """x (..., T, d) -> q (..., H, T, hd), k and v (..., Hkv, T, hd), RoPE applied."""
        cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)
        if self.fused is not None:   # one matmul, and one rotation for q and k together (-6 % cached prefill)
            heads = F.linear(x, self.fused).unflatten(-1, (-1, self.head_dim)).transpose(-3, -2)
            rotated = self.heads + self.kv_heads
            qk = apply_rope(heads[..., :rotated, :, :], cos, sin)
            return qk[..., : self.heads, :, :], qk[..., self.heads:, :, :], heads[..., rotated:, :, :]
        shape = x.shape[:-1]
        q = self.q_proj(x).reshape(*shape, self.heads, self.head_dim).transpose(-3, -2)
        k = self.k_proj(x).reshape(*shape, self.kv_heads, self.head_dim).transpose(-3, -2)
        v = self.v_proj(x).reshape(*shape, self.kv_heads, self.head_dim).transpose(-3, -2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, attended: torch.Tensor) -> torch.Tensor:
        return self.o_proj(attended.transpose(-3, -2).flatten(-2))


class MLP(nn.Module):
    def __init__(self, config: CausalConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    fused: torch.Tensor | None = None   # gate and up weights stacked by `CausalLM.fuse_for_inference`

    def forward(self, x):
        if self.fused is not None:
            gate, up = F.linear(x, self.fused).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: CausalConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)


class CausalLM(nn.Module):
    # What `runtime.compile_for_decoding` compiles: the prefill and the decode step; the prefill
    # traced with one symbol per input size (a batch of 2 cached prompts is not the 2 kv heads).
    decoding_hot_paths = ("extend", "decode_step")
    distinct_input_sizes = ("extend",)

    def __init__(self, config: CausalConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def fuse_for_inference(self) -> "CausalLM":
        """One matmul for q/k/v and one for gate/up in every layer: at serving's small prefills
        (a prefix-cache hit leaves ~5-13 tokens) per-matmul overhead dominates. The parameters stay
        as they are (Llama's names); the stacked copies are stale if the model is trained again."""
        with torch.no_grad():
            for block in self.layers:
                a, m = block.self_attn, block.mlp
                a.fused = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()
                m.fused = torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach()
        return self

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(x))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Full causal pass (training, scoring): logits (B, T, V) at every position. Left padding
        is supported: positions count real tokens only."""
        x, _ = self._layers(input_ids, attention_mask, None)
        return self._head(x)

    def extend(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               past_kv: list | None = None, past_mask: torch.Tensor | None = None):
        """The prefill: prompts (B, T), left-padded where `attention_mask` is 0, that may continue
        cached prefixes `past_kv` (per layer (k, v) of shape (B, Hkv, P, hd), left-padded where
        `past_mask` is 0; the prefix cache's). A row's prompt is its past's real tokens then its
        new ones, so padding may sit between them. Returns the last token's logits (B, 1, V) (the
        head runs on no other position), the per-layer (k, v) of past and new tokens
        (B, Hkv, P + T, hd), contiguous, and their mask (B, P + T)."""
        b, t = input_ids.shape
        p = past_kv[0][0].shape[-2] if past_kv else 0
        kv_mask = None
        if attention_mask is not None or past_mask is not None:
            new_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            past_mask = new_mask.new_ones(b, p) if past_mask is None else past_mask
            kv_mask = torch.cat([past_mask, new_mask], dim=-1) if p else new_mask
        x, kv = self._layers(input_ids, kv_mask, past_kv)
        if not p:   # one memory layout with or without a past (cat's): the decode graphs guard on it
            kv = [(k.contiguous(), v.contiguous()) for k, v in kv]
        if kv_mask is None:
            kv_mask = torch.ones(b, p + t, dtype=torch.long, device=input_ids.device)
        return self._head(x[:, -1:]), kv, kv_mask

    def _layers(self, input_ids: torch.Tensor, kv_mask: torch.Tensor | None, past_kv: list | None):
        """The blocks over new tokens (B, T) after P past ones: kv_mask (B, P + T) marks real
        tokens, whose count gives each new token's RoPE position (None: no padding). Returns the
        last hidden states (B, T, d) and the per-layer (k, v) of all P + T tokens."""
        t = input_ids.shape[1]
        p = past_kv[0][0].shape[-2] if past_kv else 0
        device = input_ids.device
        # The attention mask is additive (0 or -inf): SDPA turns a boolean one into that itself on
        # each call, per layer (a CPU prefix-cache hit: 58 -> 40 us an attention).
        if kv_mask is None:   # positions run on from the past; a query sees every key up to itself
            positions = torch.arange(p, p + t, device=device)[None]
            bias = torch.full((t, p + t), float("-inf"), device=device).triu(diagonal=p + 1)[None, None]
        else:
            positions = (kv_mask.long().cumsum(-1)[:, p:] - 1).clamp(min=0)
            keys = torch.arange(p + t, device=device)
            queries = keys[p:, None]
            # A query sees real keys up to itself; a padded query would see nothing, so it sees
            # itself too and its softmax stays finite.
            seen = ((keys <= queries) & kv_mask.bool()[:, None, :]) | (keys == queries)
            bias = torch.zeros(seen.shape, device=device).masked_fill_(~seen, float("-inf"))[:, None]
        cos, sin = rope(positions, self.config.head_dim, self.config.rope_theta)
        # dropout modules cost ~5 us a call even when off: 9 in a prefix-cache hit's ~4 ms prefill on a CPU
        dropout = self.training
        x = self.embed_tokens(input_ids)
        if dropout:
            x = self.embedding_dropout(x)
        attention_dropout = self.config.attention_dropout if dropout else 0.0
        kv = []
        for i, block in enumerate(self.layers):
            attn = block.self_attn
            q, k, v = attn.qkv(block.input_layernorm(x), cos, sin)
            if past_kv:
                k, v = torch.cat([past_kv[i][0], k], dim=-2), torch.cat([past_kv[i][1], v], dim=-2)
            kv.append((k, v))
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=attention_dropout,
                                               enable_gqa=attn.heads != attn.kv_heads)
            h = attn.out(o)
            x = x + (block.dropout(h) if dropout else h)
            h = block.mlp(block.post_attention_layernorm(x))
            x = x + (block.dropout(h) if dropout else h)
        return x, kv

    def decode_step(self, token: torch.Tensor, positions: torch.Tensor, prompt_kv: list, prompt_mask: torch.Tensor,
                    cache: list[list], level: slice | None = None) -> torch.Tensor:
        """One new token per beam. token (B, W); positions (B,) RoPE position of this token;
        prompt_kv per layer (k, v) of shape (B, Hkv, T, hd), one copy per request read by all its
        beams; prompt_mask (B, T) 1 for real tokens; cache per layer [k, v] of shape
        (B, W, Hkv, t, hd), extended in place. Returns logits (B, W, vocab), or with `level` the
        fp32 log-probabilities (normalised over the whole vocabulary) of that block of it."""
        c = self.config
        b, w = token.shape
        rep = c.num_heads // c.num_kv_heads
        cos, sin = rope(positions[:, None, None].expand(b, w, 1), c.head_dim, c.rope_theta)
        x = self.embed_tokens(token)[:, :, None, :]                          # (B, W, 1, d)
        prompt_bias = ((1.0 - prompt_mask.float()) * NEG_INF)[:, None, None, :]  # (B, 1, 1, T)
        scale = c.head_dim ** -0.5
        for block, (pk, pv), layer_cache in zip(self.layers, prompt_kv, cache):
            attn = block.self_attn
            q, k, v = attn.qkv(block.input_layernorm(x), cos, sin)   # q (B, W, H, 1, hd), k/v (B, W, Hkv, 1, hd)
            if layer_cache:
                k, v = torch.cat([layer_cache[0], k], dim=-2), torch.cat([layer_cache[1], v], dim=-2)
            layer_cache[:] = [k, v]
            q = q.view(b, w, c.num_kv_heads, rep, c.head_dim) * scale
            # Against the prompt: the beams (x query heads of a group) act as one query sequence.
            q_prompt = q.permute(0, 2, 1, 3, 4).reshape(b, c.num_kv_heads, w * rep, c.head_dim)
            s_prompt = (q_prompt @ pk.transpose(-1, -2) + prompt_bias)      # (B, Hkv, W*rep, T)
            s_prompt = s_prompt.view(b, c.num_kv_heads, w, rep, -1).permute(0, 2, 1, 3, 4)
            s_own = q @ k.transpose(-1, -2)                                  # (B, W, Hkv, rep, t)
            weights = torch.softmax(torch.cat([s_prompt, s_own], dim=-1), dim=-1)
            t_prompt = pk.shape[-2]
            w_prompt = weights[..., :t_prompt].permute(0, 2, 1, 3, 4).reshape(b, c.num_kv_heads, w * rep, t_prompt)
            o = (w_prompt @ pv).view(b, c.num_kv_heads, w, rep, c.head_dim).permute(0, 2, 1, 3, 4)
            o = o + weights[..., t_prompt:] @ v                              # (B, W, Hkv, rep, hd)
            x = x + attn.o_proj(o.reshape(b, w, 1, c.num_heads * c.head_dim))
            x = x + block.mlp(block.post_attention_layernorm(x))
        if level is None:
            return self._head(x[:, :, 0])
        return block_log_probs(self.norm(x[:, :, 0]), self.lm_head.weight, level)


def to_hf_state_dict(model: CausalLM) -> dict[str, torch.Tensor]:
    return {(k if k.startswith("lm_head") else f"model.{k}"): v for k, v in model.state_dict().items()}


def hf_config(config: CausalConfig):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                       intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
                       num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
                       head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta,
                       tie_word_embeddings=config.tie_word_embeddings, attention_bias=False, mlp_bias=False,
                       pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id, eos_token_id=None,
                       max_position_embeddings=4096)


def to_hf(model: CausalLM):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(hf_config(model.config))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    if unexpected or [m for m in missing if not (m == "lm_head.weight" and model.config.tie_word_embeddings)]:
        raise RuntimeError(f"Llama weight mapping is incomplete: missing={missing} unexpected={unexpected}")
    return hf.eval()
