"""Test helpers for the trainer: a tiny fake model with the models-layer contract, meshes, batches.

`BagModel` implements `init_params / params_logical_axes / loss_fn / greedy_decode` with a few
small matrices (a mean-pooled encoder and a bigram decoder), so trainer mechanics (sharding,
accumulation, checkpoints, resume) are tested independently of the T5 implementation and fast.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from activeit_jax.data.vocab import EOS_ID
from activeit_jax.models import EncoderDecoderBatches, SpecialIds, batches

# Logical rules for the 2x2x2 test mesh: every parameter dimension is split somewhere.
TEST_RULES = (("batch", ("data", "fsdp")), ("vocab", "model"), ("embed", "fsdp"),
              ("mlp", "model"), ("length", None))


@dataclasses.dataclass(frozen=True)
class BagModel:
    """Tiny encoder-decoder: pooled source embedding + previous-token embedding -> MLP -> vocab.

    A `models.TrainableModel`: it declares its kind and builds T5's batches."""
    decoder_only = False  # a class attribute, as on the wrappers (no dataclass field)
    vocab_size: int = 64
    embed_dim: int = 16
    mlp_dim: int = 32
    dropout_rate: float = 0.0
    supports_packing: bool = False

    def init_params(self, rng):
        k = jax.random.split(rng, 4)
        v, d, m = self.vocab_size, self.embed_dim, self.mlp_dim
        return {
            "embedding": jax.random.normal(k[0], (v, d)) * 0.5,
            "mlp": {"wi": jax.random.normal(k[1], (d, m)) / np.sqrt(d),
                    "wo": jax.random.normal(k[2], (m, d)) / np.sqrt(m)},
            "norm_scale": jnp.ones((d,)),
            "logits": jax.random.normal(k[3], (d, v)) / np.sqrt(d),
        }

    def batch_builder(self, vocab=None):
        return EncoderDecoderBatches(SpecialIds.of(self, vocab))

    def params_logical_axes(self):
        return {"embedding": P("vocab", "embed"),
                "mlp": {"wi": P("embed", "mlp"), "wo": P("mlp", "embed")},
                "norm_scale": P("embed"), "logits": P("embed", "vocab")}

    def _logits(self, params, encoder_tokens, decoder_inputs, dropout_rng=None):
        emb = params["embedding"]
        mask = (encoder_tokens > 0).astype(jnp.float32)[..., None]
        pooled = (emb[encoder_tokens] * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
        h = emb[decoder_inputs] + pooled[:, None, :]
        h = h * params["norm_scale"]
        if dropout_rng is not None and self.dropout_rate > 0:
            keep = jax.random.bernoulli(dropout_rng, 1 - self.dropout_rate, h.shape)
            h = jnp.where(keep, h / (1 - self.dropout_rate), 0)
        h = h + jax.nn.relu(h @ params["mlp"]["wi"]) @ params["mlp"]["wo"]
        return h @ params["logits"]

    def loss_fn(self, params, batch, dropout_rng=None):
        logits = self._logits(params, batch["encoder_input_tokens"],
                              batch["decoder_input_tokens"], dropout_rng)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        targets = batch["decoder_target_tokens"]
        token_nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
        weights = batch["decoder_loss_weights"].astype(jnp.float32)
        loss_sum = (token_nll * weights).sum()
        num_tokens = weights.sum()
        return loss_sum / jnp.maximum(num_tokens, 1.0), {"loss_sum": loss_sum,
                                                         "num_tokens": num_tokens}

    def greedy_decode(self, params, batch, max_decode_length):
        enc = batch["encoder_input_tokens"]
        bsz = enc.shape[0]

        def body(t, carry):
            out, prev, done = carry
            logits = self._logits(params, enc, prev[:, None])[:, 0]
            tok = jnp.argmax(logits, -1).astype(jnp.int32)
            tok = jnp.where(done, 0, tok)
            out = out.at[:, t].set(tok)
            return out, tok, done | (tok == EOS_ID)

        init = (jnp.zeros((bsz, max_decode_length), jnp.int32), jnp.zeros((bsz,), jnp.int32),
                jnp.zeros((bsz,), bool))
        out, _, _ = jax.lax.fori_loop(0, max_decode_length, body, init)
        return out


def random_batch(seed: int, batch: int, source_length: int = 12, target_length: int = 8,
                 vocab_size: int = 64) -> dict[str, np.ndarray]:
    """Random encoder-decoder features with random lengths (some padding in every row)."""
    rng = np.random.default_rng(seed)
    inputs, targets = [], []
    for _ in range(batch):
        inputs.append(list(rng.integers(2, vocab_size, rng.integers(3, source_length))) + [1])
        targets.append(list(rng.integers(2, vocab_size, rng.integers(1, target_length))) + [1])
    return batches.encdec_features(inputs, targets, source_length, target_length)


def mesh(shape: tuple[int, int, int]):
    """A ("data", "fsdp", "model") mesh on the first prod(shape) devices."""
    n = int(np.prod(shape))
    devices = np.asarray(jax.devices()[:n]).reshape(shape)
    return jax.sharding.Mesh(devices, ("data", "fsdp", "model"))
