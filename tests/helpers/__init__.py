"""Tiny-model and adapter factories shared by tests (import as `helpers.tiny`)."""
