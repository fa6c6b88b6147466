"""edgeprune: turn a Hugging Face causal LM into a GGUF that meets a device budget."""

__version__ = "0.1.0"
