"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

The connection form comes from :mod:`airflow_provider_candela.connection_form`, its one definition.
This module must stay import-cheap: no Airflow, no requests.
"""

from __future__ import annotations

from typing import Any, Final

from airflow_provider_candela import __version__
from airflow_provider_candela.connection_form import UI_FIELD_BEHAVIOUR, conn_fields

CONN_TYPE: Final = "candela"
HOOK_CLASS: Final = "airflow_provider_candela.hooks.candela.CandelaHook"
#: The one description of the package: also the ``description`` of pyproject.toml and the README's first sentence.
DESCRIPTION: Final = "Apache Airflow provider for FINBOURNE Candela: run LLM agent and pipeline sessions as DAG tasks"
#: The docs' sources on the forge (``make docs`` builds them into a site); also pyproject.toml's Documentation.
DOCS_URL: Final = "https://github.com/finbourne/airflow-provider-candela/tree/main/docs"

#: The ``[candela]`` options the provider reads (``airflow config list`` shows them; the docs are made from this).
CONFIG: Final[dict[str, Any]] = {
    "candela": {
        "description": "Options of the Candela provider.",
        "options": {
            "capture_content": {
                "description": (
                    "With ``[traces] otel_on``: put the prompt text and Candela's answer on the spans "
                    "(``gen_ai.input.messages`` / ``gen_ai.output.messages``). Off by default: prompts and "
                    "answers may hold personal or confidential data."
                ),
                "version_added": "0.1.0",
                "type": "boolean",
                "example": "True",
                "default": "False",
            },
            "trigger_threads": {
                "description": (
                    "Threads of the Candela triggers of one triggerer process. Their blocking calls run on these "
                    "threads, never on the event loop's default executor that every provider's triggers share, "
                    "so a Candela that does not answer holds only these."
                ),
                "version_added": "0.1.0",
                "type": "integer",
                "example": "32",
                "default": "16",
            },
        },
    }
}


def get_provider_info() -> dict[str, Any]:
    """Return the provider metadata Airflow reads through the ``apache_airflow_provider`` entry point."""
    return {
        "package-name": "airflow-provider-candela",
        "name": "Candela",
        "description": DESCRIPTION,
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Candela",
                "external-doc-url": "https://www.finbourne.com/",
                "how-to-guide": [f"{DOCS_URL}/{page}.md" for page in ("quickstart", "operators", "taskflow")],
                "tags": ["service"],
            }
        ],
        "operators": [
            {
                "integration-name": "Candela",
                "python-modules": [
                    "airflow_provider_candela.operators.batch",
                    "airflow_provider_candela.operators.sessions",
                    "airflow_provider_candela.operators.stored_sessions",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Candela",
                "python-modules": ["airflow_provider_candela.sensors.sessions"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Candela",
                "python-modules": [
                    "airflow_provider_candela.triggers.sessions",
                    "airflow_provider_candela.triggers.slots",
                ],
            }
        ],
        "hooks": [
            {
                "integration-name": "Candela",
                "python-modules": ["airflow_provider_candela.hooks.candela"],
            }
        ],
        "task-decorators": [
            {
                "name": "candela_pipeline",
                "class-name": "airflow_provider_candela.decorators.sessions.candela_pipeline_task",
            },
            {
                "name": "candela_agent",
                "class-name": "airflow_provider_candela.decorators.sessions.candela_agent_task",
            },
            {
                "name": "candela_pipeline_batch",
                "class-name": "airflow_provider_candela.decorators.sessions.candela_pipeline_batch_task",
            },
            {
                "name": "candela_agent_batch",
                "class-name": "airflow_provider_candela.decorators.sessions.candela_agent_batch_task",
            },
        ],
        # The Candela page of the UI: the plugin has no app or view before Airflow 3.1 (it is simply absent).
        "plugins": [
            {
                "name": "candela_page",
                "plugin-class": "airflow_provider_candela.plugins.candela_page.CandelaPagePlugin",
            }
        ],
        "config": CONFIG,
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": HOOK_CLASS,
                "hook-name": "Candela",
                "conn-fields": conn_fields(),
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
    }
