"""Candela sensors."""
