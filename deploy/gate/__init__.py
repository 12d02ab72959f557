"""The release gate: `python -m deploy.gate` runs its stages (docs/gate.md)."""
