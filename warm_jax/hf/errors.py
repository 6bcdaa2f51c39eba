"""The one error type of the Hugging Face conversion (bad input, named; nothing written)."""


class ConversionError(ValueError):
  """A model directory or checkpoint cannot be converted as asked; the message names the
  file, config key or tensor at fault and the fix. No output is left behind."""
