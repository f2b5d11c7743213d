"""Candela hooks."""
