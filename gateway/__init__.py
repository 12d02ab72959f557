"""REST gateway: the OpenAI-compatible front for external clients, speaking gRPC to Envoy."""
