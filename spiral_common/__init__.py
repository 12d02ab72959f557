"""Shared pieces of the Spiral services: config, errors, logging, chat domain, gRPC plumbing."""
