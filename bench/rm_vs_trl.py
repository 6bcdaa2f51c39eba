"""Benchmark 1: reward-model training throughput, our jitted RM step vs TRL's RewardTrainer.

Where it sits: the RM stage (`gin/rm.gin`) trains members with `Trainer` + `PreferenceObjective`;
the usual PyTorch way is TRL's `RewardTrainer` on a `*ForSequenceClassification` model. Both
sides here train the same decoder (a transformers `GPT2ForSequenceClassification` built from a
`GPT2Config` of our preset's shape, no download), from the same initial weights (ours,
converted by `bench/hf_convert.py`; their rewards are checked equal before timing), on the same
tokenized preference pairs in the same order, in float32 on the CPU, with the same optimizer
(AdamW, lr 1e-4 decaying linearly, gradient clipping at 1, no weight decay, no dropout), for the
same number of steps after the same warm-up. Tokens are counted the same way on both sides:
steps x batch x 2 sequences x seq_len (every sequence is full length, so no padding is
computed or counted on either side). As a check that the two sides do the same work, their
per-step losses agree to a few 1e-4 early on (float32 rounding compounds later).

  bash bench/setup_env.sh
  bench/.venv/bin/python -m bench.rm_vs_trl                         # small preset, batch 32 x 128
  bench/.venv/bin/python -m bench.rm_vs_trl --presets tiny small --steps 10 --rounds 2

Our step is what `Trainer.train` runs per step: the host batch sharded onto the device, the
jitted train step (state donated), the step's metrics read back (the NaN guard). TRL's is its
`Trainer.train` loop with `logging_steps=1` (its metrics sync every step too), timed by a
callback at the end of each step.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time

import numpy as np

from bench import common

LEARNING_RATE = 1e-4
# (batch, seq_len) per preset: the demo's RM batch for tiny/small; base (110M) at a short
# sequence so that a step stays seconds on 2 cores.
SHAPES = {"tiny": (32, 128), "small": (32, 128), "base": (4, 128)}
VOCAB = {"tiny": common.VOCAB_SIZE, "small": common.VOCAB_SIZE, "base": 32000}


@dataclasses.dataclass
class SideResult:
  """Throughput of one side: `steps` timed steps after `warmup_steps`."""

  name: str
  tokens_per_s: float
  step_s: list[float]
  losses: list[float]
  load: str


def _window(step_ends: list[float], warmup_steps: int) -> float:
  """Seconds from the end of the last warm-up step to the end of the last step."""
  return step_ends[-1] - step_ends[warmup_steps - 1]


def _tokens(batch_size: int, seq_len: int, steps: int) -> int:
  return steps * batch_size * 2 * seq_len


def initial_params(config, seed: int = 0):
  """Our RewardModel's init (host numpy), the starting point of both sides."""
  from warm_jax.models import RewardModel
  from warm_jax.rm.scoring import unboxed_init
  return unboxed_init(RewardModel(config), seed)


def measure_ours(*, config, pairs: dict[str, np.ndarray], batch_size: int, warmup_steps: int,
                 steps: int, init_params, partitioner=None, microbatches: int = 1) -> SideResult:
  """Our jitted RM train step on `pairs`, batch s = rows [s*B, (s+1)*B) (cycling); with
  `microbatches` > 1 the step accumulates the batch's gradient over that many sequential
  slices (TrainerConfig.microbatches: the same step, what the experiment presets run)."""
  import jax
  from warm_jax.core.objectives import PreferenceObjective
  from warm_jax.core.optimizers import OptimizerConfig
  from warm_jax.core.trainer import Trainer, TrainerConfig

  total = warmup_steps + steps
  seq_len = pairs["chosen_tokens"].shape[1]
  with tempfile.TemporaryDirectory() as model_dir:  # the step never writes there
    trainer = Trainer(
        objective=PreferenceObjective(config),
        optimizer=OptimizerConfig(name="adamw", learning_rate=LEARNING_RATE, schedule="linear",
                                  clip_grad_norm=1.0),
        partitioner=partitioner or common.single_device_partitioner(),
        config=TrainerConfig(train_steps=total, batch_size=batch_size,
                             microbatches=microbatches),
        model_dir=model_dir, seq_len=seq_len)
    state = trainer.state_from_params(init_params)
    load_before = common.load_average()
    step_ends, losses = [], []
    for step in range(total):
      rows = np.arange(step * batch_size, (step + 1) * batch_size) % len(pairs["chosen_tokens"])
      batch = trainer.shard_batch({k: v[rows] for k, v in pairs.items()})
      state, metrics = trainer.train_step(state, batch)
      metrics = jax.device_get(metrics)
      step_ends.append(time.perf_counter())
      losses.append(float(metrics["loss"]) / float(metrics["weight"]))
  elapsed = _window(step_ends, warmup_steps)
  return SideResult(name="warm-jax", tokens_per_s=_tokens(batch_size, seq_len, steps) / elapsed,
                    step_s=list(np.diff(step_ends[warmup_steps - 1:])), losses=losses,
                    load=f"{load_before:.1f}-{common.load_average():.1f}")


def byte_level_tokenizer(vocab_size: int):
  """A transformers tokenizer over ids 0..V-1 (PAD 0, EOS 1, UNK 2, as warm_jax.data.vocab),
  built in memory: RewardTrainer needs one for its pad token; the pairs come tokenized."""
  from tokenizers import Tokenizer, models
  from transformers import PreTrainedTokenizerFast
  vocab = {f"<t{i}>": i for i in range(vocab_size)}
  return PreTrainedTokenizerFast(
      tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="<t2>")),
      pad_token="<t0>", eos_token="<t1>", unk_token="<t2>")


def measure_trl(*, config, pairs: dict[str, np.ndarray], batch_size: int, warmup_steps: int,
                steps: int, init_params) -> SideResult:
  """TRL's RewardTrainer on the same pairs, in the same order, from the same weights."""
  import datasets
  from transformers import TrainerCallback
  from transformers.trainer_callback import PrinterCallback
  from trl import RewardConfig, RewardTrainer

  from bench import hf_convert

  total = warmup_steps + steps
  seq_len = pairs["chosen_tokens"].shape[1]
  model = hf_convert.gpt2_reward_model(init_params, config=config).train()
  datasets.disable_progress_bars()
  dataset = datasets.Dataset.from_dict({"chosen_ids": pairs["chosen_tokens"].tolist(),
                                        "rejected_ids": pairs["rejected_tokens"].tolist()})
  step_ends: list[float] = []
  losses: list[float] = []

  class Clock(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
      step_ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
      if logs and "loss" in logs:
        losses.append(float(logs["loss"]))

  with tempfile.TemporaryDirectory() as out:
    args = RewardConfig(
        output_dir=out, per_device_train_batch_size=batch_size, max_steps=total,
        learning_rate=LEARNING_RATE, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        train_sampling_strategy="sequential", dataloader_num_workers=0,
        max_length=seq_len, logging_strategy="steps", logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, seed=0)
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset,
                            processing_class=byte_level_tokenizer(config.vocab_size),
                            callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # it prints every step's log dict
    load_before = common.load_average()
    trainer.train()
  if len(step_ends) != total:
    raise RuntimeError(f"TRL ran {len(step_ends)} steps, expected {total}")
  elapsed = _window(step_ends, warmup_steps)
  return SideResult(name="TRL RewardTrainer", tokens_per_s=_tokens(batch_size, seq_len, steps)
                    / elapsed, step_s=list(np.diff(step_ends[warmup_steps - 1:])),
                    losses=losses, load=f"{load_before:.1f}-{common.load_average():.1f}")


def check_same_function(*, config, init_params, pairs: dict[str, np.ndarray]) -> float:
  """Max |reward ours - reward GPT-2| on a few sequences: the two sides' models are one."""
  import torch
  from warm_jax.models import RewardModel

  from bench import hf_convert
  tokens, mask = pairs["chosen_tokens"][:4], pairs["chosen_mask"][:4]
  ours = np.asarray(RewardModel(config).apply({"params": init_params}, tokens, mask))
  with torch.no_grad():
    theirs = hf_convert.gpt2_reward_model(init_params, config=config)(
        input_ids=torch.from_numpy(tokens).long(),
        attention_mask=torch.from_numpy(mask).long()).logits[:, 0].numpy()
  return float(np.max(np.abs(ours - theirs)))


@dataclasses.dataclass
class Comparison:
  preset: str
  num_params: int
  batch_size: int
  seq_len: int
  warmup_steps: int
  steps: int
  round: int
  ours: SideResult
  trl: SideResult
  init_reward_max_diff: float
  microbatches: int = 1  # ours

  @property
  def ratio(self) -> float:
    return self.ours.tokens_per_s / self.trl.tokens_per_s


def compare(*, preset: str, batch_size: int, seq_len: int, steps: int, warmup_steps: int = 2,
            rounds: int = 1, vocab_size: int | None = None,
            microbatches: tuple[int, ...] = (1,)) -> list[Comparison]:
  """Both sides, `rounds` times alternating (ours first, once per value of `microbatches`), on
  the same pairs and init; each of our rows is compared with the round's one TRL run."""
  # float32 compute on both sides (the base preset computes in bfloat16 by default).
  config = common.preset_config(preset, vocab_size=vocab_size or VOCAB[preset], dtype="float32",
                                max_len=max(seq_len, common.preset_fields(preset)["max_len"]))
  pairs = common.random_pairs(num_pairs=batch_size * (warmup_steps + steps), seq_len=seq_len,
                              vocab_size=config.vocab_size)
  init = initial_params(config)
  diff = check_same_function(config=config, init_params=init, pairs=pairs)
  if diff > 1e-3:
    raise RuntimeError(f"our RM and its GPT-2 conversion disagree by {diff}: not the same model")
  out = []
  for r in range(rounds):
    kw = dict(config=config, pairs=pairs, batch_size=batch_size, warmup_steps=warmup_steps,
              steps=steps, init_params=init)
    ours = {}
    for mb in microbatches:
      ours[mb] = measure_ours(**kw, microbatches=mb)
      print(f"  {preset} round {r}: ours ({mb} microbatches) {ours[mb].tokens_per_s:,.0f} "
            "tokens/s", file=sys.stderr, flush=True)
    trl = measure_trl(**kw)
    print(f"  {preset} round {r}: TRL {trl.tokens_per_s:,.0f} tokens/s", file=sys.stderr,
          flush=True)
    out += [Comparison(preset=preset, num_params=config.num_params(), batch_size=batch_size,
                       seq_len=seq_len, warmup_steps=warmup_steps, steps=steps, round=r,
                       ours=side, trl=trl, init_reward_max_diff=diff, microbatches=mb)
            for mb, side in ours.items()]
  return out


def table(results: list[Comparison]) -> str:
  rows = []
  for c in results:
    n = min(len(c.ours.losses), len(c.trl.losses))
    loss_gap = max(abs(a - b) for a, b in zip(c.ours.losses[:3], c.trl.losses[:3]))
    rows.append([
        c.preset, f"{c.num_params / 1e6:.2f}M", f"{c.batch_size} x 2 x {c.seq_len}",
        f"{c.warmup_steps} + {c.steps}", c.round, c.microbatches, c.ours.tokens_per_s,
        c.trl.tokens_per_s,
        f"**{c.ratio:.2f}x**",
        f"{c.ours.losses[0]:.4f} / {c.trl.losses[0]:.4f}",
        f"{loss_gap:.1e}", f"{c.ours.losses[n - 1]:.4f} / {c.trl.losses[n - 1]:.4f}",
        f"{c.ours.load} / {c.trl.load}"])
  return common.markdown_table(
      ["preset", "params", "batch x seqs x len", "warm-up + timed steps", "round",
       "ours: microbatches", "ours tokens/s", "TRL tokens/s", "ours / TRL", "loss step 1 (ours / TRL)",
       "max loss gap steps 1-3", "loss last step (ours / TRL)", "load (ours / TRL)"], rows)


def main(argv=None) -> None:
  common.configure_jax_for_benchmarks()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--presets", nargs="+", default=["small"], choices=list(SHAPES))
  parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
  parser.add_argument("--warmup_steps", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=2, help="alternating repeats of both sides")
  parser.add_argument("--batch_size", type=int, help="override the preset's batch")
  parser.add_argument("--seq_len", type=int, help="override the preset's sequence length")
  parser.add_argument("--microbatches", type=int, nargs="+", default=[1],
                      help="our step's sequential microbatches (TrainerConfig.microbatches; "
                           "the experiment presets run 8): one row of ours per value")
  parser.add_argument("--json", help="also save the rows here")
  args = parser.parse_args(argv)
  print(common.header("RM training throughput: warm-jax vs TRL RewardTrainer (CPU, fp32)",
                      extra_versions=("torch", "transformers", "trl", "accelerate")))
  results = []
  for preset in args.presets:
    batch, seq = SHAPES[preset]
    results += compare(preset=preset, batch_size=args.batch_size or batch,
                       seq_len=args.seq_len or seq, steps=args.steps,
                       warmup_steps=args.warmup_steps, rounds=args.rounds,
                       microbatches=tuple(args.microbatches))
  print(table(results))
  common.write_json(args.json, [dict(dataclasses.asdict(c), ratio=c.ratio) for c in results])


if __name__ == "__main__":
  main()
