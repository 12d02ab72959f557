"""Trainer service: nightly QLoRA distillation jobs from a durable queue, and the adapter registry."""
