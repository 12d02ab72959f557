"""The cascade's tiers: one object per tier, each implementing `CascadeTier` (see `base.py`).

The router's wiring (`router_svc/server.py`) builds them into an ordered list; `Cascade` asks each in turn
and writes the trace, the metrics and the traffic log once, from the answering tier's `TierResult`.
"""
