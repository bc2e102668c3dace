"""The validator: perplexity (and, later, throughput) of a quantized checkpoint beside its baseline."""
