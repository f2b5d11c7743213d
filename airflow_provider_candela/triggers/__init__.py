"""Candela triggers."""
