"""The library the Spiral services share: config, errors, logs, chat domain, gRPC plumbing, models, adapters."""
