"""Miner service: clusters the traffic log into patterns that the router's pattern head answers."""
