"""Loading backbones and running them: quantization, attention, pooling, packing, placement (used by train, predict)."""
