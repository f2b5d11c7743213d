"""TaskFlow decorators of the Candela provider: ``@task.candela_pipeline`` and ``@task.candela_agent``."""
