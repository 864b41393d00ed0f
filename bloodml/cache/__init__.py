"""Frozen-backbone feature cache: content-addressed, on disk (shared between runs) and in memory."""
