"""Streaming plumbing: layer-by-layer scoring from the safetensors (stream), when to stream (policy), and the one-layer-at-a-time forward the heal and sparsity stages share (layerwise)."""
