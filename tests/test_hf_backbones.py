"""Backbone presets (gin/models/{gpt2,llama,gemma}*.gin), the model options real families need,
and the memory estimate of warm_jax.models.memory.

The presets must be exactly what the converter builds from the real models' config.json (so
an imported checkpoint loads under them), and their parameter counts the published ones.
Memory: the parameter and Adafactor numbers are checked against jax.eval_shape of the real
model and optimizer, the activation estimate against XLA's own buffer assignment.
"""

import math

import numpy as np
import pytest

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from warm_jax.models import LanguageModel, RewardModel, TransformerConfig, memory


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def preset(name, vocab_size):
  from warm_jax import configurables
  from warm_jax.gin_utils import parse_gin
  configurables.register()
  gin.clear_config()
  parse_gin([f"gin/models/{name}.gin"], [f"VOCAB_SIZE = {vocab_size}"])
  with gin.unlock_config():
    return gin.get_configurable("TransformerConfig")()


def _hf_configs():
  transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")
  pytest.importorskip("torch")
  from hf_tiny_models import hf_config
  llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
  # (preset, vocab, transformers config, published parameter count or None)
  return [
      ("gpt2_tiny", 1024, hf_config("gpt2", vocab_size=1024), None),
      ("llama_tiny", 1024, hf_config("llama", vocab_size=1024), None),
      ("gemma_tiny", 1024, hf_config("gemma", vocab_size=1024), None),
      # GPT-2's 124,439,808 less the 12 x 768 key biases our decoder drops (softmax ignores them)
      ("gpt2", 50257, transformers.GPT2Config(), 124_439_808 - 12 * 768),
      ("gpt2_medium", 50257, transformers.GPT2Config(n_embd=1024, n_layer=24, n_head=16),
       354_823_168 - 24 * 1024),
      ("llama2_7b", 32000, transformers.LlamaConfig(
          vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
          num_attention_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
       6_738_415_616),
      ("llama3_1b", 128256, transformers.LlamaConfig(
          vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
          num_attention_heads=32, num_key_value_heads=8, head_dim=64,
          max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
          rope_parameters=llama3), 1_235_814_400),
      ("gemma_2b", 256000, transformers.GemmaConfig(
          hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
          num_attention_heads=8, num_key_value_heads=1, head_dim=256), 2_506_172_416),
      ("gemma_7b", 256000, transformers.GemmaConfig(), 8_537_680_896),
  ]


def test_presets_are_what_the_converter_builds_from_config_json(clean_gin):
  from warm_jax.hf import families
  for name, vocab, hf_config, published in _hf_configs():
    ours = preset(name, vocab)
    converted = families.get_family(hf_config.model_type, source=name).config_from_hf(
        hf_config.to_dict())
    assert ours == converted.replace(dtype=ours.dtype), name
    if published is not None:
      assert ours.num_params() == published, name
    assert sum(math.prod(s) for s in memory.param_shapes(ours).values()) == ours.num_params()


@pytest.mark.parametrize("config", [
    TransformerConfig(vocab_size=1024, d_model=128, num_layers=2, num_heads=4, mlp_dim=512,
                      max_len=64),
    TransformerConfig(vocab_size=1024, d_model=128, num_layers=2, num_heads=4, num_kv_heads=1,
                      head_dim=64, mlp_dim=384, max_len=64, norm="rmsnorm", positions="rotary",
                      mlp_activation="geglu", use_bias=False, tie_embeddings=False),
], ids=["gpt2_like", "gemma_like"])
@pytest.mark.parametrize("head", ["lm", "reward"])
def test_parameter_and_optimizer_bytes_equal_eval_shape(config, head):
  from warm_jax.core.optimizers import OptimizerConfig, make_optimizer
  module = (LanguageModel if head == "lm" else RewardModel)(config)
  tokens = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), tokens, tokens))
                    ["params"])
  from warm_jax.core.checkpoints import flatten_params
  assert {k: tuple(v.shape) for k, v in flatten_params(params).items()} == \
      memory.param_shapes(config, head=head)

  def state_bytes(tx):
    state = jax.eval_shape(tx.init, params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)
               if x.dtype == jnp.float32)

  shapes = memory.param_shapes(config, head=head)
  for opt, momentum in (("adafactor", None), ("adafactor", 0.9), ("adamw", None)):
    tx, _ = make_optimizer(OptimizerConfig(name=opt, momentum=momentum), 10)
    assert memory.optimizer_state_bytes(shapes, optimizer=opt, momentum=momentum is not None) \
        == state_bytes(tx), (opt, momentum)
  # Factoring really happened for the 128-wide matrices (else the test would prove little).
  n = sum(math.prod(s) for s in shapes.values())
  assert memory.optimizer_state_bytes(shapes) < 4 * n / 3


@pytest.mark.parametrize("config,batch,seq", [
    (TransformerConfig(vocab_size=2048, d_model=256, num_layers=2, num_heads=4, mlp_dim=1024,
                       max_len=512), 4, 256),
    (TransformerConfig(vocab_size=8000, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                       mlp_dim=512, max_len=512, norm="rmsnorm", positions="rotary",
                       mlp_activation="swiglu", use_bias=False), 2, 384),
], ids=["gpt2_like", "llama_like"])
def test_activation_estimate_is_within_2x_of_xla(config, batch, seq):
  model = LanguageModel(config)
  tokens = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
  params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                      jnp.ones((1, 4), jnp.int32)))["params"])

  def loss(p, t):
    logits = model.apply({"params": p}, t)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], t[:, 1:]).mean()

  compiled = jax.jit(jax.grad(loss)).lower(params, tokens).compile()
  xla = compiled.memory_analysis().temp_size_in_bytes
  estimate = memory.activation_bytes(config, batch_size=batch, seq_len=seq)
  print(f"\nactivations: XLA {xla / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB")
  assert 0.5 < estimate / xla < 2.0


def test_sharding_divides_state_and_the_table_renders(clean_gin, capsys):
  config = TransformerConfig(vocab_size=1000, d_model=64, num_layers=2, num_heads=4,
                             mlp_dim=128, max_len=64)
  one = memory.training_memory(config, batch_size=8, seq_len=64)
  eight = memory.training_memory(config, batch_size=8, seq_len=64, param_shards=8,
                                 batch_shards=8)
  assert one.params == 4 * config.num_params() == one.grads
  assert eight.params == one.params // 8 and eight.optimizer == one.optimizer // 8
  assert eight.activations == math.ceil(one.activations / 8)
  assert one.total == one.params + one.grads + one.optimizer + one.activations
  assert memory.kv_cache_bytes(config.replace(dtype="bfloat16"), batch_size=2, length=10) == \
      2 * 2 * 2 * 10 * 4 * 16 * 2
  from warm_jax import configurables, gin_utils  # the program's gin layer (`python -m`)
  assert memory.command_line(["gin/models/gpt2.gin:50257", "gin/models/gemma_2b.gin:256000"],
                             register=configurables.register,
                             parse_gin=gin_utils.parse_gin) == 0
  table = capsys.readouterr().out
  assert "| gpt2 | 124M |" in table and "| gemma_2b | 2,506M |" in table


def test_gemma_norm_offset_starts_as_identity_and_options_are_validated():
  base = TransformerConfig(vocab_size=50, d_model=32, num_layers=1, num_heads=4, mlp_dim=64,
                           max_len=16, norm="rmsnorm", positions="rotary")
  gemma = base.replace(norm_scale_offset=1.0)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 9)))
  init = jax.jit(lambda cfg: LanguageModel(cfg).init(jax.random.key(0), tokens),
                 static_argnums=0)
  apply = jax.jit(lambda cfg, p: LanguageModel(cfg).apply(p, tokens), static_argnums=0)
  p_base, p_gemma = init(base), init(gemma)
  scale = p_gemma["params"]["decoder"]["final_norm"]["scale"]
  np.testing.assert_array_equal(nn.unbox(scale), np.zeros(32))  # stored as w, applied as 1 + w
  np.testing.assert_allclose(apply(gemma, p_gemma), apply(base, p_base), atol=1e-6)
  # sqrt(d_model) embedding scale: the first block sees sqrt(32) x the embedding.
  assert not np.allclose(apply(base.replace(scale_embeddings=True), p_base), apply(base, p_base))
  with pytest.raises(ValueError, match="rope_scaling.*only applies to positions='rotary'"):
    TransformerConfig(vocab_size=5, d_model=8, num_layers=1, num_heads=1, mlp_dim=8, max_len=8,
                      rope_scaling=(8.0, 1.0, 4.0, 64))
  with pytest.raises(ValueError, match="rope_scaling"):
    base.replace(rope_scaling=(8.0, 4.0, 1.0, 64))
  assert base.replace(rope_scaling=[8.0, 1.0, 4.0, 64]).rope_scaling == (8.0, 1.0, 4.0, 64)
