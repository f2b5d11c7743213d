"""Airflow UI plugins of the provider (Airflow 3.1+; on older Airflow the plugin defines no app or view)."""
