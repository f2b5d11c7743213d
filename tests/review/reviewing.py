"""``ScriptedReviewer``: answers the reviews of one DAG through the REST API, as a person would, by a script."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_candela.testing import CandelaEmulator
from airflow_provider_candela.testing._reviewer import Reviewer

#: One answer of the script: the option and the params_input, or a function of the review making them.
Answer = tuple[str, Mapping[str, Any] | None] | Callable[[dict[str, Any]], tuple[str, Mapping[str, Any] | None]]


@dataclass
class Seen:
    """A review as the reviewer saw it, and what the emulator ran for the user at that moment."""

    review: dict[str, Any]
    running_session: Any
    response: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScriptedReviewer:
    """Answers the reviews of one DAG as they open: per task id, the next answer of its script."""

    reviewer: Reviewer
    candela: CandelaEmulator
    dag_id: str
    script: dict[str, list[Answer]]
    seen: dict[str, list[Seen]] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ScriptedReviewer:
        self._thread = threading.Thread(target=self._loop, name="scripted-reviewer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)
        if self.errors:
            raise self.errors[0]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for review in self.reviewer.pending(self.dag_id):
                    self._answer(review)
            except BaseException as err:  # surfaced by __exit__
                self.errors.append(err)
                return
            self._stop.wait(0.2)  # the next look for reviews, or at once when the run is over

    def _answer(self, review: dict[str, Any]) -> None:
        task_id = review["task_instance"]["task_id"]
        answers = self.script.get(task_id)
        if not answers:
            return  # not scripted: left for the timeout
        running = self.candela.stats()["running_sessions"].get(self.candela.username)
        answer = answers.pop(0)
        option, params = answer(review) if callable(answer) else answer
        seen = Seen(review, running)
        self.seen.setdefault(task_id, []).append(seen)
        seen.response = self.reviewer.respond(review, option, params)
