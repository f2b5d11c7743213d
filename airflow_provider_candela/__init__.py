"""Apache Airflow provider for FINBOURNE Candela (LLM agent and pipeline sessions).

Nothing heavy is imported here: every DAG file that imports an operator pays for this module.
"""

__version__ = "0.1.0"
