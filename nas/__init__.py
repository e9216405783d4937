"""opmix: search vision backbones that mix convolution and self-attention under a FLOP budget."""
