"""Batched autoregressive sampling from a `LanguageModel`, with a KV cache, under jit.

Where it sits: best-of-N draws its N candidates per prompt from the SFT policy here
(`warm_jax.policy.bon`), RL draws its rollouts from the policy being trained
(`warm_jax.policy.rl`), and win
rates compare policies on samples drawn here (`warm_jax.policy.win_rates`).

How a batch is decoded (`decode`, one jitted program): the LEFT-padded prompts [batch, P]
(the layout of `datasets.prompt_dataset`: every row's last prompt token at slot P - 1) fill a
`KVCache` of P + max_new_tokens slots in one pass; then a `lax.while_loop` samples one token
per row per step and feeds it back, until every row has emitted EOS or max_new_tokens is
reached. A row that emitted EOS keeps feeding masked pads: its later tokens are PAD, their log
probs 0 and their mask 0. `use_cache=False` decodes the same way but recomputes the whole
sequence each step (the reference the cache is tested and benchmarked against).

Randomness: row r's token at step t is drawn with the key fold_in(fold_in(key(seed), r), t),
where r is the row's id (its global index unless given): a row's sample depends on the seed
and its id only, not on the batch size, the batch it lands in or the device count.

Returned log probs are log softmax(logits / temperature) at the sampled token (temperature 1
when greedy), i.e. the log probability under the temperature-scaled policy *before* any top-k
or top-p truncation; at temperature 1 they equal a teacher-forced forward pass.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.core import flops as flops_lib
from warm_jax.data.vocab import EOS_ID, PAD_ID
from warm_jax.models import LanguageModel, TransformerConfig
from warm_jax.models.transformer import init_kv_cache
from warm_jax.core.partitioning import Partitioner
from warm_jax.core.row_slices import map_row_slices

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How responses are sampled.

  Attributes:
    max_new_tokens: most tokens generated per response (EOS included).
    temperature: softmax temperature (paper: 0.9); 0 means greedy argmax.
    top_k: keep only the k most likely tokens (0: off).
    top_p: nucleus sampling, keep the smallest set of tokens with probability >= top_p (1: off).
    eos_id: the token that ends a response; None never stops early (benchmarks).
    pad_id: the token written after EOS.
    use_cache: KV-cache decoding; False recomputes the whole sequence every step (reference).
    loop_rows: rows per decoding loop (None: the whole compiled batch in one loop). A loop
      runs until its slowest row ends, so a big batch runs ~max_new_tokens steps for every
      row; on CPU, loops of 32 rows (one compiled call runs batch / loop_rows of them in
      turn, `core.row_slices`) sample ~1.3-1.5x more responses a second than one of 64-256
      (bench/RESULTS.md section 11). The same tokens either way (each row has its own
      random stream; log-probs equal up to float rounding).
  """

  max_new_tokens: int = 48
  temperature: float = 0.9
  top_k: int = 0
  top_p: float = 1.0
  eos_id: int | None = EOS_ID
  pad_id: int = PAD_ID
  use_cache: bool = True
  loop_rows: int | None = None

  def __post_init__(self):
    if not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
      raise ValueError(f"SamplingConfig.max_new_tokens={self.max_new_tokens!r}: must be a "
                       "positive integer")
    if self.temperature < 0:
      raise ValueError(f"SamplingConfig.temperature={self.temperature}: must be >= 0 (0 is "
                       "greedy)")
    if self.top_k < 0:
      raise ValueError(f"SamplingConfig.top_k={self.top_k}: must be >= 0 (0 turns it off)")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingConfig.top_p={self.top_p}: must be in (0, 1] (1 turns it off)")
    if self.loop_rows is not None and (not isinstance(self.loop_rows, int)
                                       or self.loop_rows <= 0):
      raise ValueError(f"SamplingConfig.loop_rows={self.loop_rows!r}: a positive integer (rows "
                       "per decoding loop) or None (the whole batch)")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


# -------------------------------------------------------------------------------------------------
# One token
# -------------------------------------------------------------------------------------------------
def filter_logits(logits: Array, *, top_k: int = 0, top_p: float = 1.0) -> Array:
  """logits [..., vocab] with the tokens outside the top-k / top-p set at -inf."""
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Probability mass strictly before each sorted token: keep a token while that is < top_p
    # (so the most likely token is always kept).
    before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(before < top_p, sorted_logits, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def first_argmax(x: Array) -> Array:
  """jnp.argmax(x, axis=-1) -- the first index of the maximum, NaN counted as the maximum --
  as two plain reductions (a max, then a min over the indices that hit it).

  XLA on CPU lowers argmax to one variadic (value, index) reduction that does not vectorise;
  this form gives the same indices 2.3-2.9x faster on [64-512, 1024] logits (the draw alone,
  bench/RESULTS.md section 8).
  """
  best = jnp.max(x, axis=-1, keepdims=True)  # NaN if the row has one
  hit = (x == best) | jnp.isnan(x)
  ids = jnp.arange(x.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(hit, ids, x.shape[-1]), axis=-1)


def gumbel_max_draw(keys: Array, logits: Array) -> Array:
  """One draw per row of logits [batch, vocab] with per-row keys [batch]: the same token as
  jax.vmap(jax.random.categorical)(keys, logits) -- the same Gumbel noise, the same first-index
  tie rule -- through `first_argmax`."""
  noise = jax.vmap(lambda key, row: jax.random.gumbel(key, row.shape, row.dtype))(keys, logits)
  return first_argmax(noise + logits)


def sample_tokens(logits: Array, keys: Array, config: SamplingConfig) -> tuple[Array, Array]:
  """One token per row from logits [batch, vocab] with per-row keys [batch].

  Returns (tokens [batch] int32, log_probs [batch]): log softmax(logits / T) at the token (T
  = 1 when greedy), before top-k/top-p truncation.
  """
  logits = logits.astype(jnp.float32)
  if config.greedy:
    tokens = first_argmax(logits)
    scaled = logits
  else:
    scaled = logits / config.temperature
    filtered = filter_logits(scaled, top_k=config.top_k, top_p=config.top_p)
    tokens = gumbel_max_draw(keys, filtered)
  log_probs = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), tokens[:, None],
                                  axis=-1)[:, 0]
  return tokens.astype(jnp.int32), log_probs


# -------------------------------------------------------------------------------------------------
# A batch
# -------------------------------------------------------------------------------------------------
def decode(params: Any, prompt_tokens: Array, prompt_mask: Array, row_ids: Array, seed: Array,
           *, model: LanguageModel, config: SamplingConfig,
           max_positions: int | None = None, reserve: int = 0) -> dict[str, Array]:
  """Samples a response for every row of a left-padded prompt batch (jittable).

  Args:
    params: the LanguageModel's params.
    prompt_tokens, prompt_mask: [batch, P] LEFT-padded (each row's last slot is real).
    row_ids: [batch] int, the id that picks each row's random stream.
    seed: [] int, the sampling seed.
    max_positions, reserve: a row stops (unfinished, no EOS) once its prompt's real tokens +
      its generated tokens + `reserve` (1: the EOS that `close_unfinished` appends for a
      reward model) reach max_positions, the positions the models were trained on: a long
      prompt gets a shorter response instead of untrained positions. None: max_new_tokens only.
  Returns:
    tokens [batch, max_new_tokens] int32 (PAD after EOS), mask (1 on generated tokens, EOS
    included), log_probs [batch, max_new_tokens] float32 (0 where mask is 0), and steps (the
    number of decoding steps run, [] int32).
  """
  batch, prompt_len = prompt_tokens.shape
  new = config.max_new_tokens
  apply = functools.partial(model.apply, {"params": params})
  if config.use_cache:
    cache = init_kv_cache(model.config, batch_size=batch, length=prompt_len + new)
    logits, state = apply(prompt_tokens, prompt_mask, cache, method=LanguageModel.decode)

    def feed(state, token, real, step):
      del step
      logits, state = apply(token[:, None], real[:, None], state, method=LanguageModel.decode)
      return logits[:, 0], state
  else:
    if prompt_len + new > model.config.max_len:
      raise ValueError(f"prompt length {prompt_len} + max_new_tokens {new} exceeds the model's "
                       f"max_len {model.config.max_len}")
    logits = apply(prompt_tokens, prompt_mask)
    pad = jnp.zeros((batch, new), jnp.int32)
    state = (jnp.concatenate([prompt_tokens.astype(jnp.int32), pad], axis=1),
             jnp.concatenate([prompt_mask.astype(jnp.int32), pad], axis=1))

    def feed(state, token, real, step):
      tokens, mask = state
      tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, prompt_len + step))
      mask = jax.lax.dynamic_update_slice(mask, real[:, None], (0, prompt_len + step))
      logits = apply(tokens, mask)  # the whole sequence, every step
      return jax.lax.dynamic_index_in_dim(logits, prompt_len + step, axis=1,
                                          keepdims=False), (tokens, mask)

  row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(seed), row_ids)
  eos = -1 if config.eos_id is None else config.eos_id

  if max_positions is None:
    budget = jnp.full((batch,), new, jnp.int32)
  else:  # each row's own cap: its prompt + response + reserve fit max_positions
    budget = jnp.clip(max_positions - reserve - jnp.sum(prompt_mask.astype(jnp.int32), -1),
                      0, new)

  def cond(carry):
    step, _, _, done, _, _, _ = carry
    return (step < new) & ~jnp.all(done)

  def body(carry):
    step, logits, state, done, tokens, log_probs, mask = carry
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
    token, log_prob = sample_tokens(logits, keys, config)
    real = ~done
    token = jnp.where(real, token, config.pad_id)
    log_prob = jnp.where(real, log_prob, 0.0)
    at = (0, step)
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], at)
    log_probs = jax.lax.dynamic_update_slice(log_probs, log_prob[:, None], at)
    mask = jax.lax.dynamic_update_slice(mask, real.astype(jnp.int32)[:, None], at)
    done = done | (token == eos) | (step + 1 >= budget)
    logits, state = feed(state, token, real.astype(jnp.int32), step)
    return step + 1, logits, state, done, tokens, log_probs, mask

  init = (jnp.zeros((), jnp.int32), logits[:, -1], state, budget <= 0,
          jnp.full((batch, new), config.pad_id, jnp.int32), jnp.zeros((batch, new), jnp.float32),
          jnp.zeros((batch, new), jnp.int32))
  steps, _, _, _, tokens, log_probs, mask = jax.lax.while_loop(cond, body, init)
  return {"tokens": tokens, "mask": mask, "log_probs": log_probs, "steps": steps}


@dataclasses.dataclass
class Samples:
  """Responses of `Sampler.sample` (host numpy).

  tokens, mask, log_probs: [n, max_new_tokens] (see `decode`); ended [n]: the row emitted
  EOS (else it was cut at max_new_tokens); lengths [n]: generated tokens, EOS included.
  """

  tokens: np.ndarray
  mask: np.ndarray
  log_probs: np.ndarray
  ended: np.ndarray

  @property
  def lengths(self) -> np.ndarray:
    return self.mask.sum(-1)


def check_left_padded(prompt_mask: np.ndarray, *, name: str = "prompt_mask") -> None:
  """Raises unless every row has a real token and its last slot is real (left padding)."""
  prompt_mask = np.asarray(prompt_mask)
  if prompt_mask.ndim != 2:
    raise ValueError(f"{name} must be [batch, prompt_len], got shape {prompt_mask.shape}")
  if not np.all(prompt_mask[:, -1] == 1):
    rows = np.nonzero(prompt_mask[:, -1] != 1)[0][:5].tolist()
    raise ValueError(f"{name} rows {rows} do not end with a real token: prompts must be LEFT-"
                     "padded (datasets.prompt_dataset is); left-pad them or use the prompt "
                     "arrays of a built data dir")


class Sampler:
  """Jitted, batch-sharded sampling of [n, P] left-padded prompts with one policy.

  Args:
    model_config: the policy's shape.
    partitioner: mesh and rules (params on their shardings, rows over the batch axes).
    config: sampling settings.
    batch_size: rows per compiled call (a multiple of the partitioner's batch divisor).
    max_positions: the positions the policy was trained on (`trained_positions`; None: its
      max_len). A row whose prompt's real tokens + max_new_tokens (+ the closing EOS, with
      `closing_eos`) exceed it gets a shorter response, cut where it reaches the limit (an
      unfinished response; `decode`); `sample` refuses a prompt that leaves no room at all.
    closing_eos: reserve one position for the EOS that `close_unfinished` appends when a
      reward model reads the responses (best-of-N, RL, the on-policy RM data).
  """

  def __init__(self, *, model_config: TransformerConfig, partitioner: Partitioner,
               config: SamplingConfig, batch_size: int = 64, max_positions: int | None = None,
               closing_eos: bool = False):
    self.max_positions = model_config.max_len if max_positions is None else max_positions
    self.reserve = int(closing_eos and config.eos_id is not None)
    self.positions_source = ("TransformerConfig.max_len" if max_positions is None else
                             "the positions the policy was trained on")
    if batch_size % partitioner.batch_divisor:
      raise ValueError(f"sampling batch_size {batch_size} is not divisible by the "
                       f"{partitioner.batch_divisor} batch devices: use a multiple of "
                       f"{partitioner.batch_divisor}")
    loop_rows = batch_size if config.loop_rows is None else min(config.loop_rows, batch_size)
    if batch_size % loop_rows or loop_rows % partitioner.batch_divisor:
      raise ValueError(f"SamplingConfig.loop_rows={config.loop_rows} does not split the sampling "
                       f"batch of {batch_size} rows into equal loops divisible by the "
                       f"{partitioner.batch_divisor} batch devices: use a divisor of "
                       f"{batch_size} that is a multiple of {partitioner.batch_divisor}")
    self.loops = batch_size // loop_rows
    self.model = LanguageModel(model_config)
    self.config, self.partitioner, self.batch_size = config, partitioner, batch_size
    boxed = jax.eval_shape(lambda: self.model.init(
        jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)))
    self.param_shardings = partitioner.param_shardings(boxed["params"])
    rows2, rows1 = partitioner.batch_sharding(2), partitioner.batch_sharding(1)

    def run(params, prompt_tokens, prompt_mask, row_ids, seed):
      with partitioner.activation_rules():
        out = map_row_slices(lambda t, m, r: decode(
            params, t, m, r, seed, model=self.model, config=config,
            max_positions=self.max_positions, reserve=self.reserve), self.loops,
            prompt_tokens, prompt_mask, row_ids)
        # steps: summed over the loops (the FLOP count's unit is one step of one loop)
        return {**out, "steps": jnp.sum(out["steps"])} if self.loops > 1 else out

    self._decode = jax.jit(
        run, in_shardings=(self.param_shardings, rows2, rows2, rows1, partitioner.replicated()),
        out_shardings={"tokens": rows2, "mask": rows2, "log_probs": rows2,
                       "steps": partitioner.replicated()})

  def place(self, params: Any) -> Any:
    """Host or device params -> arrays on this sampler's shardings (once per policy)."""
    return jax.tree_util.tree_map(
        lambda x, s: jax.device_put(x if isinstance(x, jax.Array) else np.asarray(x), s),
        params, self.param_shardings)

  def sample_sharded(self, params: Any, prompt_tokens: Array, prompt_mask: Array,
                     row_ids: Array, seed: int) -> dict[str, Array]:
    """One compiled call on already sharded [batch_size, P] arrays (RL's rollouts). Its model
    FLOPs (`decode_flops`, with the loops' executed steps) go to the stage profile."""
    with self.partitioner.mesh_context():
      out = self._decode(params, prompt_tokens, prompt_mask, row_ids,
                         jnp.asarray(seed, jnp.int32))
    base, per_step = self.decode_flops(prompt_tokens.shape[1])
    flops_lib.count_steps("sample", out["steps"], base=base, per_step=per_step)
    return out

  def decode_flops(self, prompt_len: int) -> tuple[float, float]:
    """(FLOPs of the prompt passes, FLOPs of one decoding step of one loop) of one call on
    [batch_size, prompt_len] prompts: each of the call's `loops` runs its rows' prompt pass,
    then one single-token forward of its batch_size / loops rows per step (the last step's
    logits are computed and unused, and counted). With the KV cache every
    token attends over the cache's prompt_len + max_new_tokens slots; without it the prompt
    pass attends over the prompt and each step recomputes the whole prompt_len +
    max_new_tokens sequence."""
    cfg, batch = self.model.config, self.batch_size
    rows = batch // self.loops
    slots = prompt_len + self.config.max_new_tokens
    if self.config.use_cache:
      per_token = cfg.forward_flops_per_token(slots)
      return batch * prompt_len * per_token, rows * per_token
    return (batch * prompt_len * cfg.forward_flops_per_token(prompt_len),
            rows * slots * cfg.forward_flops_per_token(slots))

  def sample(self, params: Any, prompt_tokens: np.ndarray, prompt_mask: np.ndarray, *,
             seed: int, row_ids: np.ndarray | None = None) -> Samples:
    """Responses for every row of [n, P] left-padded prompts (any n; the last call is padded).

    row_ids: [n] ids of the rows' random streams (default 0..n-1).
    """
    prompt_tokens, prompt_mask = np.asarray(prompt_tokens), np.asarray(prompt_mask)
    check_left_padded(prompt_mask)
    check_positions(prompt_mask, max_new_tokens=self.config.max_new_tokens,
                    limit=self.max_positions, source=self.positions_source,
                    program="Sampler.sample", closing_eos=bool(self.reserve))
    n = len(prompt_tokens)
    row_ids = np.arange(n, dtype=np.int32) if row_ids is None else np.asarray(row_ids, np.int32)
    parts: dict[str, list[np.ndarray]] = {"tokens": [], "mask": [], "log_probs": []}
    for start in range(0, n, self.batch_size):
      rows = slice(start, start + self.batch_size)
      t, m, r = prompt_tokens[rows], prompt_mask[rows], row_ids[rows]
      pad = self.batch_size - len(t)
      if pad:  # filler rows copy the first row (a valid prompt) and are dropped below
        t, m, r = (np.concatenate([x, np.repeat(x[:1], pad, axis=0)]) for x in (t, m, r))
      sharded = self.partitioner.shard_batch({"t": t, "m": m, "r": r}, self.batch_size)
      out = jax.device_get(self.sample_sharded(params, sharded["t"], sharded["m"],
                                               sharded["r"], seed))
      for k in parts:
        parts[k].append(np.asarray(out[k])[:self.batch_size - pad])
    new = self.config.max_new_tokens
    empty = {"tokens": np.zeros((0, new), np.int32), "mask": np.zeros((0, new), np.int32),
             "log_probs": np.zeros((0, new), np.float32)}
    arrays = {k: np.concatenate(v) if v else empty[k] for k, v in parts.items()}
    return Samples(**arrays, ended=response_ended(arrays["tokens"], arrays["mask"],
                                                  self.config.eos_id))


def response_ended(tokens: np.ndarray, mask: np.ndarray, eos_id: int | None) -> np.ndarray:
  """[n] bool: the response's last generated token is EOS."""
  if eos_id is None:
    return np.zeros(len(tokens), bool)
  return np.any((np.asarray(tokens) == eos_id) & (np.asarray(mask) == 1), axis=-1)


# -------------------------------------------------------------------------------------------------
# Position safety and unfinished responses (shared by best-of-N, RL and win rates)
# -------------------------------------------------------------------------------------------------
def trained_positions(model_configs: TransformerConfig | tuple[TransformerConfig, ...], *,
                      data_dir: str | None = None) -> tuple[int, str]:
  """(limit, where it comes from): the most positions (prompt + response tokens) the models
  were trained on. That is the data dir's SEQ_LEN (meta.json `seq_len`: the pre-training, SFT
  and preference sequences are that long), capped by each model's TransformerConfig.max_len;
  without a data dir (or one whose meta.json has no seq_len) it is the smallest max_len.
  Position-table rows beyond the limit were never trained (learned positions) or never seen
  (RoPE), so a program that decodes or scores past it reads noise."""
  configs = model_configs if isinstance(model_configs, tuple) else (model_configs,)
  limit = min(c.max_len for c in configs)
  source = f"TransformerConfig.max_len {limit}"
  if data_dir:
    from warm_jax.data import data_dir as data_dir_lib
    seq_len = data_dir_lib.read_meta(data_dir).get("seq_len")
    if seq_len is not None and int(seq_len) <= limit:
      limit, source = int(seq_len), f"SEQ_LEN of {data_dir}/meta.json"
  return limit, source


def check_positions(prompt_mask: np.ndarray, *, max_new_tokens: int, limit: int, source: str,
                    program: str, closing_eos: bool = False) -> int:
  """The positions rule of every program that decodes (`trained_positions` gives `limit`): a
  response is cut at max_new_tokens or where the prompt's real tokens + the response (+ the
  closing EOS a reward model reads after an unfinished response, `close_unfinished`, when
  `closing_eos`) reach `limit`, whichever comes first (`Sampler(max_positions=...)` does the
  cutting, row by row). On the host and before any decoding, this refuses prompts that leave
  no room for a single new token (an error naming the numbers and the fix) and returns how
  many prompts will have their responses capped below max_new_tokens (logged). Positions
  count real tokens (left padding uses none)."""
  prompt_mask = np.asarray(prompt_mask)
  if not len(prompt_mask):
    return 0
  real = prompt_mask.sum(-1)
  extra = int(closing_eos)
  longest = int(real.max())
  eos = " + 1 closing EOS (an unfinished response, docs/policy.md)" if extra else ""
  if longest + 1 + extra > limit:
    over = int(np.sum(real + 1 + extra > limit))
    raise ValueError(
        f"{program}: prompts of up to {longest} real tokens + 1 new token{eos} = "
        f"{longest + 1 + extra} positions, but the models were trained on {limit} ({source}); "
        f"{over} of {len(real)} prompts leave no room for a response. Fix: use shorter "
        "prompts, or rebuild the data with a larger SEQ_LEN and retrain the models on it")
  capped = int(np.sum(real + max_new_tokens + extra > limit))
  if capped:
    logging.info("%s: %d of %d prompts (up to %d real tokens) get responses capped below "
                 "max_new_tokens %d by the %d trained positions (%s)%s", program, capped,
                 len(real), longest, max_new_tokens, limit, source, eos)
  return capped


def close_unfinished(response_tokens, response_mask, eos_id: int | None):
  """THE rule for a response that did not end in EOS (cut at max_new_tokens), shared by every
  reward-model reading of a sampled response: best-of-N (`candidate_sequences`), RL
  (`rl._score_rollout`) and win rates / best-of-N judged by a control RM
  (`oracle.ControlRewardOracle`).

  The response gets one more column: EOS (mask 1) after an unfinished response, PAD (mask 0)
  after one that ended. So a reward model always reads its reward at an EOS state, the state
  every summary of its training data ends in, and it reads the whole generated text (nothing
  is replaced). The gold oracle judges the decoded text, which EOS does not change; the
  policy's own log probs (RL) cover the sampled tokens only: the closing EOS is not an action.
  eos_id None (a sampler that never stops) turns the rule off: the arrays come back as given.

  Works on numpy or jax arrays ([n, T] -> [n, T + 1]).
  """
  if eos_id is None:
    return response_tokens, response_mask
  xp = jnp if isinstance(response_tokens, jax.Array) else np
  tokens, mask = response_tokens, response_mask
  ended = xp.any((tokens == eos_id) & (mask == 1), axis=-1, keepdims=True)
  tokens = xp.concatenate([tokens, xp.where(ended, PAD_ID, eos_id).astype(tokens.dtype)], 1)
  mask = xp.concatenate([mask, xp.where(ended, 0, 1).astype(mask.dtype)], 1)
  return tokens, mask


def join_prompt_and_response(prompt_tokens, prompt_mask, response_tokens, response_mask):
  """[n, P + T] sequences (left-padded prompt, then the right-padded response) that a reward
  model, value model or teacher-forced policy reads; works on numpy or jax arrays."""
  xp = jnp if isinstance(prompt_tokens, jax.Array) else np
  return (xp.concatenate([prompt_tokens, response_tokens], axis=1).astype(xp.int32),
          xp.concatenate([prompt_mask, response_mask], axis=1).astype(xp.int32))


def candidate_sequences(prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
                        response_tokens: np.ndarray, response_mask: np.ndarray, *,
                        eos_id: int | None = EOS_ID
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens, mask, response mask) [n, <= P + T + 1] of prompt + response as a reward model
  scores them: an unfinished response closed with EOS (`close_unfinished`), joined
  (`join_prompt_and_response`), then the columns where no row has a real token trimmed (as
  `trim_padding`); the response mask is 1 exactly on the response tokens (EOS included)."""
  response_tokens, response_mask = close_unfinished(np.asarray(response_tokens),
                                                    np.asarray(response_mask), eos_id)
  tokens, mask = join_prompt_and_response(prompt_tokens, prompt_mask, response_tokens,
                                          response_mask)
  response = np.concatenate([np.zeros_like(np.asarray(prompt_mask)),
                             np.asarray(response_mask)], axis=1).astype(np.int32)
  columns = _used_columns(mask)
  return tokens[:, columns], mask[:, columns], response[:, columns]


def _used_columns(mask: np.ndarray) -> slice:
  """From the first to the last column where some row has a real token (all columns when no
  row has one)."""
  real = np.asarray(mask).any(axis=0)
  if not real.any():
    return slice(None)
  return slice(int(np.argmax(real)), len(real) - int(np.argmax(real[::-1])))


def trim_padding(tokens: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Drops the leading and trailing columns of [n, L] arrays where no row has a real token
  (scoring then pays for the longest sequence, not for P + max_new_tokens)."""
  columns = _used_columns(mask)
  return tokens[:, columns], mask[:, columns]


# -------------------------------------------------------------------------------------------------
# Benchmark: decode tokens/s with and without the KV cache, in one run
# -------------------------------------------------------------------------------------------------
def benchmark_decoding(*, model_config: TransformerConfig, batch_size: int = 64,
                       prompt_len: int = 96, max_new_tokens: int = 48, repeats: int = 3,
                       partitioner: Partitioner | None = None, seed: int = 0
                       ) -> dict[str, float]:
  """Generated tokens per second of `decode` with and without the cache (random init params,
  random full-length prompts, EOS off so every row generates max_new_tokens). The compile is
  excluded; the best of `repeats` timed calls is kept. `token_agreement`: the fraction of
  generated tokens the two sides agree on when they decode the same prompts with the same key
  (the cache is an optimisation: it should be ~1, float rounding can flip a near-tie)."""
  partitioner = partitioner or Partitioner()
  rng = np.random.default_rng(seed)
  prompts = rng.integers(3, model_config.vocab_size, (batch_size, prompt_len)).astype(np.int32)
  mask = np.ones_like(prompts)
  result: dict[str, float] = {"batch_size": batch_size, "prompt_len": prompt_len,
                              "max_new_tokens": max_new_tokens,
                              "num_params": model_config.num_params()}
  params, first = None, {}
  for use_cache in (True, False):
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0, eos_id=None,
                            use_cache=use_cache)
    sampler = Sampler(model_config=model_config, partitioner=partitioner, config=config,
                      batch_size=batch_size)
    if params is None:
      from warm_jax.rm.scoring import unboxed_init
      params = sampler.place(unboxed_init(sampler.model, seed))
    first[use_cache] = np.asarray(sampler.sample(params, prompts, mask, seed=0).tokens)
    best = float("inf")
    for r in range(repeats):
      t0 = time.perf_counter()
      sampler.sample(params, prompts, mask, seed=r + 1)
      best = min(best, time.perf_counter() - t0)
    name = "cache" if use_cache else "no_cache"
    result[f"{name}_tokens_per_s"] = batch_size * max_new_tokens / best
  result["speedup"] = result["cache_tokens_per_s"] / result["no_cache_tokens_per_s"]
  result["token_agreement"] = float(np.mean(first[True] == first[False]))
  return result


def main() -> None:
  """`python -m warm_jax.policy.sampling [tiny|small|base]`: prints the decoding benchmark as JSON."""
  import json
  import sys
  presets = {
      "tiny": dict(d_model=64, num_layers=2, num_heads=4, mlp_dim=256),
      "small": dict(d_model=128, num_layers=4, num_heads=4, mlp_dim=512),
      "base": dict(d_model=768, num_layers=12, num_heads=12, mlp_dim=3072, dtype="bfloat16"),
  }
  name = sys.argv[1] if len(sys.argv) > 1 else "small"
  if name not in presets:
    raise SystemExit(f"unknown preset {name!r}: use one of {sorted(presets)}")
  config = TransformerConfig(vocab_size=1024, max_len=256, **presets[name])
  print(json.dumps(dict(preset=name, backend=jax.default_backend(),
                        devices=jax.device_count(),
                        **benchmark_decoding(model_config=config)), indent=1))


if __name__ == "__main__":
  main()
