"""Helpers for medclf's own tests: fault injection and a corpus of awkward image files."""
