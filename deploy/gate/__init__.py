"""The release gate: `python -m deploy.gate` runs its ten stages (docs/gate.md)."""
