"""Integration tests of predictions.worker against a real Redis."""
