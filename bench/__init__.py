"""Benchmarks of airflow-provider-candela (``make bench`` / ``python -m bench``); see ``bench/run.py``."""
