"""The gateway's HTTP routes, one APIRouter per area: OpenAI-compatible, native, admin, and operations."""
