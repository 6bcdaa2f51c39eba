"""Hugging Face interop: real pretrained decoders in, trained policies and reward models out.

Where it sits: before the pipeline's first training stage (a researcher starts WARM from a
pretrained GPT-2, Llama or Gemma instead of pre-training a toy LM) and after its last (a WARM
reward model or an RL policy served by other tools). `python -m warm_jax.convert` is the CLI;
the pieces:

  families     per family (gpt2, llama, gemma): config.json <-> TransformerConfig and the map
               between Hugging Face tensor names and our parameter leaves
  safetensors_io   streaming reader (one tensor at a time, sharded index included) and a
               sharded writer
  importer     HF dir -> plain orbax params checkpoint (+ model.gin, tokenizer files)
  exporter     our params checkpoint (any experiment stage dir) -> HF dir (*ForCausalLM or
               *ForSequenceClassification) with its tokenizer and model card
  tokenizer    tokenizer.json / tokenizer.model as a TF-free `Vocabulary`;
               `seqio_vocabulary` wraps it as a seqio.Vocabulary for seqio tasks; and the
               world's SentencePiece model written as Hugging Face tokenizer files (the export)
  model_card   what an export is (WARM members, run, data dir) and its README.md
  logprob_readout   the export of an RM with the log-prob readout: tau, the `TL;DR:` marker's
               ids and the auto_map written to config.json
  modeling_warm_reward   the transformers class of that RM (the family's *ForCausalLM + the
               reward head), copied into the export and loaded with trust_remote_code=True;
               it imports torch and transformers, never warm_jax

Only `safetensors` (and `tokenizers` for tokenizer.json) are needed to convert; torch and
transformers are needed only by the parity tests (`pip install -e .[hf]`).
"""

from warm_jax.hf.errors import ConversionError

__all__ = ["ConversionError"]
