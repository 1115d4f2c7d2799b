"""Matmul FLOPs of a model's calls, from its config: what a padded position, a row and a
decoding step cost. The scorer's planner weighs padding against compilations with them
(`scoring.costs`), and the benchmarks report useful FLOP/s with them.

Counted: every matmul (2 FLOPs per multiply-add) of the projections, the feed-forward
blocks, attention's two products over every (query, key) pair the call computes (the full
square: the causal mask does not skip work), and the output head. Norms, softmaxes and
elementwise work are left out (a few percent on these models).

A teacher-forced row of padded lengths (s, t) along the model's score dimensions
(`features.BatchBuilder.score_dims`: T5 source and target, decoder-only sequence and scored
positions) costs `per_s*s + per_ss*s^2 + per_t*t + per_tt*t^2 + per_st*s*t` FLOPs
(`RowFlops`). Decoding a row of prompt (source) length s for n steps costs its prefill, then
per step `decode_per_step + decode_per_key * (keys attended)`.
"""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class RowFlops:
    """FLOPs of one model's calls as polynomials of the padded lengths (see the module
    docstring). `layers` (the deepest stack) and `scan_layers` size its compilations;
    `param_bytes` is what a decoding step reads of the weights."""
    per_s: float
    per_ss: float
    per_t: float
    per_tt: float
    per_st: float
    decode_prefill_s: float
    decode_prefill_ss: float
    decode_per_step: float
    decode_per_key: float
    decode_cross_s: float
    layers: int
    scan_layers: bool
    param_bytes: float

    def row(self, s: float, t: float = 0.0) -> float:
        """A teacher-forced row of lengths (s, t)."""
        return (s * (self.per_s + self.per_ss * s) + t * (self.per_t + self.per_tt * t)
                + self.per_st * s * t)

    def decode_row(self, s: float, steps: float) -> float:
        """Greedy decoding of one row: its prefill of `s` positions and `steps` steps, each
        over the whole cache as the decoding loop computes it (`s + steps` keys for a
        decoder-only model; `steps` self and `s` cross keys for T5)."""
        return (s * (self.decode_prefill_s + self.decode_prefill_ss * s)
                + steps * (self.decode_per_step + self.decode_cross_s * s
                           + self.decode_per_key * steps))

    def train_row(self, s: float, t: float = 0.0, remat: bool = False) -> float:
        """One training row: forward + backward (twice the forward), + a forward again with
        remat."""
        return (4.0 if remat else 3.0) * self.row(s, t)


def llama_flops(config: Any) -> RowFlops:
    """A `LlamaConfig`'s FLOPs; score dimensions (sequence s, scored positions t): the
    output head runs on the scored positions only (`decoder_loss_positions`)."""
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    heads, kv_heads, dh = config.num_heads, config.num_kv_heads, config.resolved_head_dim
    layers = config.num_layers
    per_token = layers * 2 * (2 * d * heads * dh + 2 * d * kv_heads * dh + 3 * d * f)
    per_pair = layers * 4 * heads * dh  # q.k and p.v over every (query, key) pair
    head = 2 * d * v
    return RowFlops(per_s=per_token, per_ss=per_pair, per_t=head, per_tt=0.0, per_st=0.0,
                    decode_prefill_s=per_token, decode_prefill_ss=per_pair,
                    decode_per_step=per_token + head, decode_per_key=per_pair,
                    decode_cross_s=per_pair, layers=layers,
                    scan_layers=bool(getattr(config, "scan_layers", False)),
                    param_bytes=4.0 * _llama_params(config))


def t5_flops(config: Any) -> RowFlops:
    """A `T5Config`'s FLOPs; score dimensions (source s, target t)."""
    d, v = config.d_model, config.vocab_size
    hk = config.num_heads * config.d_kv
    ff = (3 if config.is_gated else 2) * d * config.d_ff
    enc, dec = config.num_encoder_layers, config.num_decoder_layers
    enc_token = enc * 2 * (4 * d * hk + ff)
    cross_kv = dec * 2 * 2 * d * hk        # keys and values of each source position
    dec_token = dec * 2 * (6 * d * hk + ff) + 2 * d * v  # self q,k,v,o + cross q,o + head
    return RowFlops(per_s=enc_token + cross_kv, per_ss=enc * 4 * hk, per_t=dec_token,
                    per_tt=dec * 4 * hk, per_st=dec * 4 * hk,
                    decode_prefill_s=enc_token + cross_kv, decode_prefill_ss=enc * 4 * hk,
                    decode_per_step=dec_token, decode_per_key=dec * 4 * hk,
                    decode_cross_s=dec * 4 * hk, layers=max(enc, dec) + min(enc, dec),
                    scan_layers=bool(getattr(config, "scan_layers", False)),
                    param_bytes=4.0 * _t5_params(config))


def _llama_params(config: Any) -> int:
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    dh = config.resolved_head_dim
    attn = d * dh * (2 * config.num_heads + 2 * config.num_kv_heads)
    head = 0 if config.tie_word_embeddings else d * v
    return config.num_layers * (attn + 3 * d * f) + d * v + head


def _t5_params(config: Any) -> int:
    d, hk = config.d_model, config.num_heads * config.d_kv
    ff = (3 if config.is_gated else 2) * d * config.d_ff
    layers = config.num_encoder_layers * (4 * d * hk + ff)
    layers += config.num_decoder_layers * (8 * d * hk + ff)
    head = 0 if config.tie_word_embeddings else d * config.vocab_size
    return layers + d * config.vocab_size + head
