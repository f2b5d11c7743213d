"""Candela operators."""
