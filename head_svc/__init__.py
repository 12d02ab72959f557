"""Head service: specialist heads generating with llama.cpp over one GGUF base model."""
