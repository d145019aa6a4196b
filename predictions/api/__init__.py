"""The REST API of FLOWISE_API.md: management views (DRF, sync) and prediction views (async)."""
