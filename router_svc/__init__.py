"""Router service: the cascade that answers every prompt at the cheapest tier that is good enough."""
