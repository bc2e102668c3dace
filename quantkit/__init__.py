"""quantkit: Hugging Face checkpoints to 4-bit group-quantized (W4A16) models, and proof that they are good."""

__version__ = "0.1.0"
