"""The scenarios of the deployment test, in the order they run (:func:`scenarios`).

Each is a function of the :class:`~deployment.Deployment`: it arranges what it needs, acts through the
REST API, the emulator or the processes, and asserts with ``d.check``.  A scenario that needs another's
result says so (``needs``); every other one runs whatever happened before it.

1. the example DAGs are unpaused (unpausing also creates their scheduled runs) and two of them
   triggered; new slots take 15 s to start, and the first ``start_session`` of
   ``candela_scheduled_pipeline_prompt`` (``deferrable=True``) must be seen ``deferred`` with a
   ``CandelaSlotReadyTrigger`` (slot id, conn id and timing only);
2. ``candela_deploy_wait_for_session``: two ``CandelaSessionExistsSensor(deferrable=True)`` tasks, one
   with ``candela_default`` (environment variable), one with ``candela_deploy_db`` (stored in the
   metadata DB, so the triggerer must fetch it through the API server), wait for a session that the
   test creates (as another Candela user) only after it saw both tasks ``deferred`` and their triggers
   in the ``trigger`` table, running in the triggerer (no credentials in their kwargs); the run must
   succeed and the event log must show each task deferred once;
3. the same DAG again, and the triggerer is restarted while the sensors are deferred: the triggers
   must move to the new triggerer and the run must still succeed;
4. every run of the examples of 1 (scheduled and triggered) succeeds, and the deferred start resumed;
5. ``candela_agent_prompt``: its 3 mapped prompts succeed;
6. ``candela_taskflow`` (the decorators): its scheduled run succeeds;
7. ``candela_deploy_slow_agent``: the worker streaming an agent answer is killed (``kill -9`` of its
   whole process tree) mid-stream; the task must end ``failed`` (no heartbeat), the teardown
   ``stop_session`` must run on the other worker and stop the session, the run must end ``failed``;
   the killed worker is then replaced;
8. ``candela_deploy_batch``: the worker running a 12-input pipeline batch is killed mid-batch; the task's
   retry (on the other worker) sends only the inputs the first try did not answer (Airflow's task state
   store): every input reaches Candela once, the run succeeds, no session is left running;
9. ``candela_reviewed_summary``: its scheduled run's ``summarise`` waits in ``awaiting_input`` with no
   Candela session running; the review is answered through the REST API with an edit, and the downstream
   task ``send`` receives the edited answer;
10. ``candela_deploy_silent_candela``: 200 mapped tasks start straight in the triggerer
   (``start_from_trigger``), each a ``CandelaSessionExistsTrigger`` with the task's ``hook_params``
   (read 600 s, no retry) on ``candela_silent``, a loopback server that accepts connections and never
   answers (the connection itself says: read 1 s, retry 3 times).  Once all 200 run and as many of their
   calls hang on it as the triggerer loop's default executor has threads, ``candela_deploy_to_thread_probe``
   defers to a trigger that waits on ``asyncio.to_thread`` (that executor, shared by every trigger): it must
   succeed while none of the 200 has fired, the silent Candela must have seen exactly
   ``trigger_threads`` (16) connections, none closed by the triggerer (the task's read timeout, not the
   connection's, is in force), and the trigger rows must carry the ``hook_params``; the run is then
   marked failed and the silent Candela closed;
11. every Airflow service sends its metrics to a StatsD listener of the test: the Candela metrics of the
   Celery workers (prompts, requests, sessions) and of the triggerer (the deferred slot wait it timed)
   arrived, with their tags, and hold no secret;
12. the emulator shows no session left running, and every DAG run has ended as expected.

The example DAGs and the slow DAG start sessions as the same Candela user (one running session per
user): 5 to 9 each pause the others and wait until none of their runs is in progress before they start.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from deployment import TERMINAL_RUN_STATES, TI_HEARTBEAT_TIMEOUT, Deployment, DeploymentTestError
from processes import log

from airflow_provider_candela.testing import SilentCandela, SilentStats

EXAMPLE_DAGS = (
    "candela_scheduled_pipeline_prompt",
    "candela_agent_prompt",
    "candela_session_cleanup",
    "candela_taskflow",
)
PIPELINE_DAG = "candela_scheduled_pipeline_prompt"  # its start_session is deferrable=True
AGENT_DAG = "candela_agent_prompt"
TASKFLOW_DAG = "candela_taskflow"  # unpaused (its scheduled run) once the other examples are done
TRIGGERED_EXAMPLES = ("candela_session_cleanup", PIPELINE_DAG)
SENSOR_DAG = "candela_deploy_wait_for_session"
SENSOR_TASKS = ("wait_for_session", "wait_for_session_db_conn")  # candela_default (env) and candela_deploy_db (DB)
SLOW_DAG = "candela_deploy_slow_agent"
BATCH_DAG = "candela_deploy_batch"
BATCH_INPUTS = 12
REVIEW_DAG = "candela_reviewed_summary"  # its summarise task waits for a person's review (awaiting_input)
SILENT_DAG = "candela_deploy_silent_candela"  # its mapped tasks start in the triggerer, on the silent Candela
SILENT_WAITERS = 200  # more than the triggerer loop's default executor has threads (at most 32)
SILENT_CONN_ID = "candela_silent"
SILENT_CONN_READ_TIMEOUT = 1  # the connection's own read timeout; the tasks' hook_params read for 600 s
SILENT_HOOK_PARAMS = {"timeout": [5, 600], "max_retries": 0}  # the hook_params of SILENT_DAG's tasks
PROBE_DAG = "candela_deploy_to_thread_probe"  # another provider's trigger: an asyncio.to_thread call
ALL_DAGS = (*EXAMPLE_DAGS, SENSOR_DAG, SLOW_DAG, BATCH_DAG, REVIEW_DAG, SILENT_DAG, PROBE_DAG)
DEMO_USER_DAGS = (*EXAMPLE_DAGS, SLOW_DAG, BATCH_DAG, REVIEW_DAG)  # they all start sessions as the Candela user "demo"
TRIGGER_CLASSPATH = "airflow_provider_candela.triggers.sessions.CandelaSessionExistsTrigger"
SLOT_TRIGGER_CLASSPATH = "airflow_provider_candela.triggers.slots.CandelaSlotReadyTrigger"
# A new slot takes this long to come up: the example's first start task must defer while it does.
SLOT_STARTUP_SECONDS = 15


@dataclass
class ExampleRuns:
    """What the first scenario leaves for the one that checks the example runs at the end."""

    triggered: dict[str, str] = field(default_factory=dict)  # dag id -> the run the test triggered
    deferred_start: str = ""  # the pipeline DAG's run whose start_session was seen deferred


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Deployment], None]
    needs: str | None = None  # the scenario whose result this one uses: skipped when that one failed


def scenarios() -> list[Scenario]:
    examples = ExampleRuns()
    started = "example DAGs start; the pipeline's start defers"
    return [
        Scenario(started, partial(examples_start, examples=examples)),
        Scenario("deferrable sensors wait in the triggerer", sensors_defer),
        Scenario("triggerer restarted while sensors are deferred", triggerer_restart),
        Scenario("example DAG runs succeed", partial(examples_succeed, examples=examples), needs=started),
        Scenario(f"{AGENT_DAG}: 3 mapped prompts", agent_prompts),
        Scenario(f"{TASKFLOW_DAG}: scheduled run", taskflow_run),
        Scenario("worker killed -9 mid-stream", worker_killed_mid_stream),
        Scenario("worker killed -9 mid-batch; the retry sends only the rest", worker_killed_mid_batch),
        Scenario(f"{REVIEW_DAG}: the review answered with an edit", reviewed_summary),
        Scenario(f"{SILENT_WAITERS} Candela triggers on a silent Candela starve nobody", silent_candela),
        Scenario("Candela metrics from the workers and the triggerer reach StatsD", metrics_reached_statsd),
        Scenario("nothing left running", nothing_left_running),
    ]


# ------------------------------------------------------------------------------------------ the scenarios
def examples_start(d: Deployment, examples: ExampleRuns) -> None:
    api = d.api
    d.emulator.configure(slot_startup_seconds=SLOT_STARTUP_SECONDS)
    unpaused = [dag_id for dag_id in EXAMPLE_DAGS if dag_id != TASKFLOW_DAG]
    for dag_id in unpaused:
        api.set_paused(dag_id, False)
    d.ok(f"unpaused {', '.join(unpaused)}")

    examples.triggered = {dag_id: api.trigger(dag_id) for dag_id in TRIGGERED_EXAMPLES}

    examples.deferred_start = wait_start_deferred(d)


def sensors_defer(d: Deployment) -> None:
    run_id, base, wanted = trigger_sensors(d, "deferral")
    wait_triggers_running(d, run_id, check_triggers(d, run_id))
    exists_before = d.emulator.request_count("GET /sessions/exists", 200)

    created = start_next_version(d, base)
    d.check(created == wanted, f"the test created the awaited session {created} only after the deferral")
    run = d.wait_run(SENSOR_DAG, run_id)
    stop_producer_session(d)

    d.assert_success(run, "sensors deferred, session created afterwards")
    check_deferral_recorded(d, run_id)
    calls = d.emulator.request_count("GET /sessions/exists", 200) - exists_before
    d.check(calls >= len(SENSOR_TASKS), f"the triggers found the session with GET /sessions/exists ({calls} calls)")


def triggerer_restart(d: Deployment) -> None:
    api = d.api
    run_id, base, _wanted = trigger_sensors(d, "triggerer_restart")
    old_jobs = check_triggers(d, run_id)
    wait_triggers_running(d, run_id, old_jobs)
    old_pid = d.procs.services["triggerer"].pid
    d.ok(f"triggerer job(s) {sorted(set(old_jobs.values()))} (pid {old_pid}) run the triggers")

    d.procs.stop("triggerer")
    states = {ti["task_id"]: ti["state"] for ti in api.tis(SENSOR_DAG, run_id) if ti["task_id"] in SENSOR_TASKS}
    d.check(set(states.values()) == {"deferred"}, f"the sensors stay deferred while no triggerer runs ({states})")
    restarted_at = datetime.now(UTC)
    new = d.start_triggerer()

    def moved() -> dict[str, int] | None:
        jobs = {task_id: row[2] for task_id, row in trigger_rows(d, run_id).items() if row[2] is not None}
        if len(jobs) == len(SENSOR_TASKS) and all(jobs[t] != old_jobs[t] for t in SENSOR_TASKS):
            return jobs
        return None

    new_jobs = d.wait_for("the triggers to move to the new triggerer", moved, 120, 0.5)

    def healthy_again() -> bool:
        beat = api.health()["triggerer"]
        return beat["status"] == "healthy" and datetime.fromisoformat(beat["latest_triggerer_heartbeat"]) > restarted_at

    d.wait_for("the health endpoint to show the new triggerer's heartbeat", healthy_again, 60, 0.5)
    wait_triggers_running(d, run_id, new_jobs)
    d.ok(
        f"the triggers moved from triggerer job(s) {sorted(set(old_jobs.values()))} (pid {old_pid}) to job(s) "
        f"{sorted(set(new_jobs.values()))} (pid {new.pid}) and run there"
    )
    for task_id, job in sorted(new_jobs.items()):
        d.deferrals.append(f"{run_id} {task_id}: trigger resumed by the restarted triggerer (job {job})")

    start_next_version(d, base)
    run = d.wait_run(SENSOR_DAG, run_id)
    stop_producer_session(d)

    d.assert_success(run, "triggerer restarted while deferred")
    check_deferral_recorded(d, run_id)
    d.restarts.append(
        f"triggerer restarted (SIGTERM, pid {old_pid} -> {new.pid}) while 2 sensors were deferred: triggers moved "
        f"from job(s) {sorted(set(old_jobs.values()))} to {sorted(set(new_jobs.values()))}, run succeeded"
    )


def examples_succeed(d: Deployment, examples: ExampleRuns) -> None:
    for dag_id in TRIGGERED_EXAMPLES:
        # Unpausing created one scheduled run (catchup=False), the test triggered another.
        runs = d.wait_all_runs(dag_id, minimum=2)
        # No new scheduled run while the other DAGs use the same Candela user (one session per user).
        d.api.set_paused(dag_id, True)
        run_ids = {run["dag_run_id"] for run in runs}
        d.check(examples.triggered[dag_id] in run_ids, f"{dag_id}: the triggered run is among {len(runs)} run(s)")
        for run in runs:
            d.assert_success(run)
    events = d.api.events(PIPELINE_DAG, examples.deferred_start, "start_session")
    d.check(
        events.count("deferred") == 1,
        f"{PIPELINE_DAG} {examples.deferred_start}: start_session deferred once, then resumed and succeeded ({events})",
    )


def agent_prompts(d: Deployment) -> None:
    api = d.api
    only_demo_user_dag(d, AGENT_DAG)

    run_id = api.trigger(AGENT_DAG)
    run = d.wait_run(AGENT_DAG, run_id)

    d.assert_success(run)
    tis = api.tis(AGENT_DAG, run_id)
    asks = [ti for ti in tis if ti["task_id"] == "ask"]
    d.check(
        len(asks) == 3 and all(ti["state"] == "success" for ti in asks), f"{AGENT_DAG}: 3 mapped ask tasks succeeded"
    )
    log(f"{AGENT_DAG} tasks ran on {sorted({ti['hostname'] for ti in tis})}")


def taskflow_run(d: Deployment) -> None:
    only_demo_user_dag(d, TASKFLOW_DAG)  # unpausing creates its scheduled run
    try:
        runs = d.wait_all_runs(TASKFLOW_DAG, minimum=1)
    finally:
        d.api.set_paused(TASKFLOW_DAG, True)
    for run in runs:
        d.assert_success(run, "one-task typed pipeline prompt, agent decorators on a shared session")


def worker_killed_mid_stream(d: Deployment) -> None:
    api, emulator = d.api, d.emulator
    only_demo_user_dag(d, SLOW_DAG)
    emulator.configure(event_delay=0.25, agent_chat_events=400)  # a stream of ~100 s
    try:
        submits_before = emulator.request_count("POST /session/agent_submit", 200)
        run_id = api.trigger(SLOW_DAG, label="kill_worker")

        def streaming() -> dict[str, Any] | None:
            ti = api.ti(SLOW_DAG, run_id, "ask")
            if not ti or ti["state"] != "running" or not ti.get("hostname"):
                return None
            if emulator.request_count("POST /session/agent_submit", 200) <= submits_before:
                return None
            path = d.ti_log(SLOW_DAG, run_id, "ask", ti["try_number"])
            return ti if path.exists() and "[user]" in path.read_text(errors="replace") else None

        ti = d.wait_for("ask to be streaming the agent's answer", streaming, 240, 0.5)
        hostname = ti["hostname"]
        victim = {"candela-worker-1": "worker-1", "candela-worker-2": "worker-2"}.get(hostname)
        d.check(victim is not None, f"ask runs on {hostname} (pid {ti['pid']}), found by the TI's hostname")
        assert victim is not None
        survivor = "worker-2" if victim == "worker-1" else "worker-1"
        service = d.procs.services[victim]
        d.check(
            ti["pid"] in service.refresh_tree(),
            f"the TI's pid {ti['pid']} is in {victim}'s process tree (pid {service.pid})",
        )
        session = emulator.stats()["running_sessions"].get("demo")
        d.check(session is not None, f"the agent session {session} runs while the answer streams")
        stops_before = emulator.request_count("GET /session/stop", 204)

        killed = d.procs.kill_tree(victim)
        killed_at = time.monotonic()
        log(f"killed {victim} with SIGKILL: pids {killed}")
        d.check(
            emulator.stats()["running_sessions"].get("demo") == session,
            "the session is still running right after the kill (no on_kill ran)",
        )
        run = d.wait_run(SLOW_DAG, run_id, timeout=TI_HEARTBEAT_TIMEOUT + 240)

        states = {t["task_id"]: t for t in api.tis(SLOW_DAG, run_id)}
        ask, stop = states["ask"], states["stop_session"]
        d.record(run, "failed", f"{victim} killed mid-stream; teardown stopped the session")
        ask_events = api.events(SLOW_DAG, run_id, "ask")
        d.check(
            ask["state"] == "failed" and "heartbeat timeout" in ask_events,
            f"ask ended {ask['state']} after its worker died; event log {ask_events}",
        )
        d.check(
            stop["state"] == "success" and stop["hostname"] == f"candela-{survivor}",
            f"the teardown stop_session succeeded on {stop['hostname']} ({stop['state']})",
        )
        d.check(run["state"] == "failed", f"the run ended in a clear state: {run['state']}")
        stops = emulator.request_count("GET /session/stop", 204) - stops_before
        d.check(
            emulator.stats()["running_sessions"].get("demo") is None and stops >= 1,
            f"the session was stopped by the teardown ({stops} GET /session/stop after the kill)",
        )
    finally:
        emulator.configure(event_delay=0.0, agent_chat_events=None)

    log(f"run ended {time.monotonic() - killed_at:.0f} s after the kill; replacing {victim}")
    number = int(victim.rsplit("-", 1)[1])
    d.start_worker(number)
    d.wait_worker(number)
    d.restarts.append(
        f"{victim} killed -9 mid-stream (pids {killed}): ask failed, stop_session on {survivor} stopped the "
        f"session, run {run['state']}; {victim} replaced"
    )


def worker_killed_mid_batch(d: Deployment) -> None:
    api, emulator = d.api, d.emulator
    submit = "POST /session/pipeline_submit"
    only_demo_user_dag(d, BATCH_DAG)
    emulator.add_fault(match=submit, delay=1.0, count=-1)  # a batch of ~12 s: the kill lands inside it
    try:
        before = emulator.request_count(submit)
        run_id = api.trigger(BATCH_DAG, label="kill_batch")

        def batching() -> dict[str, Any] | None:
            ti = api.ti(BATCH_DAG, run_id, "classify")
            if not ti or ti["state"] != "running" or not ti.get("hostname"):
                return None
            return ti if emulator.request_count(submit) - before >= 3 else None

        ti = d.wait_for("classify to have sent 3 inputs", batching, 240, 0.25)
        victim = {"candela-worker-1": "worker-1", "candela-worker-2": "worker-2"}.get(ti["hostname"])
        d.check(victim is not None, f"classify runs on {ti['hostname']} (pid {ti['pid']})")
        assert victim is not None
        killed = d.procs.kill_tree(victim)
        sent_before_kill = emulator.request_count(submit) - before
        log(f"killed {victim} with SIGKILL after {sent_before_kill} inputs: pids {killed}")
        run = d.wait_run(BATCH_DAG, run_id, timeout=TI_HEARTBEAT_TIMEOUT + 240)
    finally:
        emulator.clear_faults()
    d.record(run, "success", f"{victim} killed mid-batch; the retry finished the rest")
    classify = api.ti(BATCH_DAG, run_id, "classify") or {}
    d.check(
        run["state"] == "success" and classify.get("try_number") == 2,
        f"the run succeeded on the retry (try {classify.get('try_number')}, run {run['state']})",
    )
    sent = emulator.request_count(submit) - before
    d.check(
        sent == BATCH_INPUTS,
        f"every input reached Candela once: {sent} prompts for {BATCH_INPUTS} inputs "
        f"({sent_before_kill} before the kill)",
    )
    d.check(
        emulator.stats()["running_sessions"].get("demo") is None,
        "no session left running (the retry's session was stopped; the killed try's was replaced by it)",
    )
    number = int(victim.rsplit("-", 1)[1])
    d.start_worker(number)
    d.wait_worker(number)
    d.restarts.append(f"{victim} killed -9 mid-batch (pids {killed}): the retry sent only the rest; {victim} replaced")


def reviewed_summary(d: Deployment) -> None:
    api, emulator = d.api, d.emulator
    only_demo_user_dag(d, REVIEW_DAG)  # unpausing creates its scheduled run
    try:
        review = d.wait_for(
            f"the review of {REVIEW_DAG}.summarise to open",
            lambda: next(
                iter(
                    api.call("GET", f"/dags/{REVIEW_DAG}/dagRuns/~/hitlDetails?response_received=false")["hitl_details"]
                ),
                None,
            ),
            300,
            1,
        )
        ti = review["task_instance"]
        run_id = ti["dag_run_id"]
        d.check(
            api.ti(REVIEW_DAG, run_id, "summarise")["state"] == "awaiting_input",
            f"{REVIEW_DAG}.summarise waits in awaiting_input (no worker slot, no triggerer)",
        )
        d.check(
            emulator.stats()["running_sessions"].get("demo") is None,
            "no Candela session runs for the user while the review is open (the one-task session was stopped)",
        )
        answer = review["params"]["answer"]["value"]
        edited = {**answer, "answer": "Edited by the reviewer: " + answer["answer"]}
        api.call(
            "PATCH",
            f"/dags/{REVIEW_DAG}/dagRuns/{run_id}/taskInstances/summarise/{ti['map_index']}/hitlDetails",
            {"chosen_options": ["Approve"], "params_input": {"answer": edited}},
        )
        run = d.wait_run(REVIEW_DAG, run_id)
    finally:
        api.set_paused(REVIEW_DAG, True)
    d.assert_success(run, "reviewed through the REST API with an edit")
    sent = api.call("GET", f"/dags/{REVIEW_DAG}/dagRuns/{run_id}/taskInstances/send/xcomEntries/return_value")
    d.check(
        sent["value"] == edited["answer"], f"the downstream task send received the edited answer ({sent['value']!r})"
    )
    record = api.call("GET", f"/dags/{REVIEW_DAG}/dagRuns/{run_id}/taskInstances/summarise/xcomEntries/review")
    d.check(
        record["value"]["decision"] == "approved" and record["value"]["edited"] is True,
        f"the review XCom records the edit: {record['value']}",
    )


def silent_candela(d: Deployment) -> None:
    from airflow_provider_candela.triggers._shared import TRIGGER_THREADS  # Airflow imports: after the env is set

    api = d.api
    silent = SilentCandela()
    d.ports["silent-candela"] = silent.port  # the end of the run checks that it is closed
    pat = secrets.token_urlsafe(16)
    run_id: str | None = None
    probe_run_id: str | None = None
    trigger_ids: set[int] = set()
    try:
        api.call(
            "POST",
            "/connections",
            {
                "connection_id": SILENT_CONN_ID,
                "conn_type": "candela",
                "host": silent.url,
                "extra": json.dumps(
                    {"access_token": pat, "timeout": f"5,{SILENT_CONN_READ_TIMEOUT}", "max_retries": 3}
                ),
            },
            expect=(201,),
        )
        for dag_id in (SILENT_DAG, PROBE_DAG):
            api.set_paused(dag_id, False)
        run_id = api.trigger(SILENT_DAG, label="silent")
        waiters = wait_silent_waiters_deferred(d, run_id)
        trigger_ids = {trigger_id for trigger_id, _job in waiters.values()}
        jobs = {job for _trigger_id, job in waiters.values()}
        d.check(len(trigger_ids) == SILENT_WAITERS and len(jobs) == 1, f"{SILENT_WAITERS} triggers, run by job {jobs}")
        job = jobs.pop()
        check_silent_trigger_kwargs(d, trigger_ids, pat)
        wait_silent_triggers_running(d, run_id, job)
        # The probe means something once as many Candela calls hang as the triggerer loop's default executor
        # has threads (asyncio's default, on this machine): on that executor, they would hold every one of them.
        default_threads = min(32, (os.cpu_count() or 1) + 4)
        held = d.wait_for(
            f"{default_threads} Candela calls (the threads of the triggerer loop's default executor) to hang on the "
            "silent Candela",
            lambda: stats if (stats := silent.stats()).open >= default_threads else None,
            120,
            0.5,
        )
        d.ok(f"the silent Candela holds {held.open} connections of the triggerer ({held.accepted} accepted)")
        d.deferrals.append(
            f"{run_id}: {SILENT_WAITERS} mapped tasks started in triggerer job {job} (start_from_trigger), "
            f"waiting on a silent Candela"
        )

        probe_run_id = api.trigger(PROBE_DAG, label="probe")
        try:
            probe = d.wait_run(PROBE_DAG, probe_run_id, timeout=120)
        except DeploymentTestError as err:
            raise DeploymentTestError(
                f"{err}: another trigger's asyncio.to_thread was not answered while {SILENT_WAITERS} Candela "
                f"triggers waited on a silent Candela (holding {silent.stats().open} connections)"
            ) from None
        seen = silent.stats()
        still = wait_silent_waiters_deferred(d, run_id, timeout=0)
        d.assert_success(probe, f"another trigger's asyncio.to_thread beside {SILENT_WAITERS} silent Candela triggers")
        check_probe(d, probe_run_id, job)
        d.check(
            still == waiters,
            f"none of the {SILENT_WAITERS} Candela triggers fired while the probe ran (all deferred, same triggers)",
        )
        check_silent_connections(d, seen, TRIGGER_THREADS)
    finally:
        # Best effort, also after a failure: no run of the scenario left running, the blocked reads ended.
        for dag_id, started in ((SILENT_DAG, run_id), (PROBE_DAG, probe_run_id)):
            if started is not None:
                fail_run_in_progress(d, dag_id, started)
        silent.close()
        for dag_id in (SILENT_DAG, PROBE_DAG):
            api.set_paused(dag_id, True)
        api.call("DELETE", f"/connections/{SILENT_CONN_ID}", expect=(204, 404))
    d.wait_for(
        f"the triggerer to drop the {len(trigger_ids)} triggers of the failed run",
        lambda: not d.query("SELECT id FROM trigger WHERE id = ANY(%s)", (sorted(trigger_ids),)),
        120,
        1,
    )
    d.record(api.run(SILENT_DAG, run_id), "failed", f"{SILENT_WAITERS} triggers on a silent Candela; marked failed")
    d.ok(f"{SILENT_DAG} run marked failed, its triggers dropped, the silent Candela closed, {SILENT_CONN_ID} deleted")


def metrics_reached_statsd(d: Deployment) -> None:
    statsd = d.statsd
    d.check(
        bool(statsd.named("candela.prompt", kind="pipeline", outcome="success")),
        f"workers: candela.prompt (kind, outcome) arrived ({len(statsd.named('candela.prompt'))} lines)",
    )
    d.check(
        bool(statsd.named("candela.request", route="POST/session/pipeline_submit", status="200")),
        f"workers: candela.request (route, status) arrived ({len(statsd.named('candela.request'))} lines)",
    )
    d.check(
        bool(statsd.named("candela.session.started", app="default/demo-pipeline"))
        and bool(statsd.named("candela.token.grants", grant="password")),
        "workers: candela.session.started (app) and candela.token.grants (grant) arrived",
    )
    d.check(
        bool(statsd.named("candela.slot.wait", deferred="true")),
        "triggerer: candela.slot.wait (deferred=true, timed by the slot trigger) arrived",
    )
    leaked = [s for s in d.candela_secrets() if any(s in line for line in statsd.lines)]
    d.check(not leaked, f"no secret in any of the {len(statsd.lines)} metric lines")


def nothing_left_running(d: Deployment) -> None:
    running = d.emulator.stats()["running_sessions"]
    d.check(all(value is None for value in running.values()), f"no Candela session left running ({running})")
    for dag_id in ALL_DAGS:
        for run in d.api.runs(dag_id):
            if run["state"] not in TERMINAL_RUN_STATES:
                raise DeploymentTestError(f"{dag_id}/{run['dag_run_id']} is still {run['state']}")
    for record in d.records:
        if record.state != record.expected:
            raise DeploymentTestError(f"{record.dag_id}/{record.run_id}: {record.state}, expected {record.expected}")
    d.ok(f"all {len(d.records)} DAG runs ended as expected")


# ------------------------------------------------------------------------------------------ arrangements
def only_demo_user_dag(d: Deployment, dag_id: str) -> None:
    """Unpause ``dag_id`` once every other DAG of the Candela user ``demo`` is paused with no run in progress."""
    others = [other for other in DEMO_USER_DAGS if other != dag_id]
    for other in others:
        d.api.set_paused(other, True)
    for other in others:
        d.wait_for(
            f"every run of {other} to end",
            lambda other=other: all(run["state"] in TERMINAL_RUN_STATES for run in d.api.runs(other)),
            420,
            1,
        )
    d.api.set_paused(dag_id, False)


def xcom_value(d: Deployment, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
    """An XCom as the REST API gives it (the stored JSON, which may come back as its text)."""
    value = d.api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")["value"]
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def trigger_sensors(d: Deployment, label: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """Trigger the sensor DAG for the next version of a new producer session; wait until both sensors deferred.

    Returns the run id, the ids of the session and those of its next version (which nobody started yet).
    """
    d.api.set_paused(SENSOR_DAG, False)
    base = new_base_session(d)
    wanted = {**base, "version": next_version(base["version"])}
    run_id = d.api.trigger(SENSOR_DAG, wanted, label=label)
    wait_sensors_deferred(d, run_id)
    return run_id, base, wanted


# Candela, as the producer user (the sensors wait for the producer's sessions).
def producer_hook(d: Deployment) -> Any:
    from airflow_provider_candela.hooks.candela import CandelaHook

    return CandelaHook(d.producer_conn_id)


def new_base_session(d: Deployment) -> dict[str, str]:
    """Start and stop a session as the producer user; return its ids (the awaited one is its next version)."""
    with producer_hook(d) as hook:
        hook.ensure_slot(timeout=60)
        hook.stop_session()
        meta = hook.start_session("default/demo-agent", "default/demo-model")
        hook.stop_session()
    ids: dict[str, str] = meta.obj_id.model_dump(mode="json")
    return ids


def start_next_version(d: Deployment, base: dict[str, str]) -> dict[str, str]:
    with producer_hook(d) as hook:
        hook.stop_session()
        meta = hook.start_session("default/demo-agent", "default/demo-model", parent_session=base)
    ids: dict[str, str] = meta.obj_id.model_dump(mode="json")
    return ids


def stop_producer_session(d: Deployment) -> None:
    with producer_hook(d) as hook:
        hook.stop_session()


def next_version(version: str) -> str:
    """The emulator's (and Candela's) next version of a session continued with ``parent_session``."""
    major, minor, _patch = version.split(".")
    return f"{major}.{int(minor) + 1}.0"


def fail_run_in_progress(d: Deployment, dag_id: str, run_id: str) -> None:
    """Mark a run failed through the REST API unless it has ended (its deferred tasks fail, their triggers are
    dropped); a failure to do so is logged, not raised (this runs in a scenario's cleanup)."""
    try:
        if d.api.run(dag_id, run_id)["state"] not in TERMINAL_RUN_STATES:
            d.api.call("PATCH", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}", {"state": "failed"})
    except Exception as err:
        log(f"marking {dag_id}/{run_id} failed did not work: {type(err).__name__}: {err}")


# ------------------------------------------------------------------------------------------ deferral evidence
def wait_start_deferred(d: Deployment) -> str:
    """The example pipeline DAG's deferrable start waits for its new slot in the triggerer; its run id."""

    def deferred() -> tuple[str, int, str] | None:
        rows = d.query(
            "SELECT ti.run_id, t.id, t.classpath FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id "
            "WHERE ti.dag_id = %s AND ti.task_id = 'start_session' AND ti.state = 'deferred'",
            (PIPELINE_DAG,),
        )
        return (str(rows[0][0]), int(rows[0][1]), str(rows[0][2])) if rows else None

    run_id, trigger_id, classpath = d.wait_for(f"{PIPELINE_DAG}: start_session deferred", deferred, 240, 0.25)
    kwargs = d.trigger_kwargs(trigger_id)
    d.check(
        classpath == SLOT_TRIGGER_CLASSPATH
        and set(kwargs)
        == {"slot_id", "assigned", "candela_conn_id", "hook_params", "poll_interval", "end_time", "waiting_since"}
        and not d.leaked_secrets(kwargs),
        f"{PIPELINE_DAG} {run_id} start_session deferred to {classpath.rsplit('.', 1)[1]} for slot "
        f"{kwargs.get('slot_id')} (slot id, conn id, hook params and timing only, no credential)",
    )
    d.deferrals.append(f"{run_id} start_session: deferred while slot {kwargs.get('slot_id')} started")
    return run_id


def wait_sensors_deferred(d: Deployment, run_id: str) -> None:
    """Both sensors of the run reach ``deferred`` (seen live through the REST API)."""

    def deferred() -> dict[str, dict[str, Any]] | None:
        tis = {ti["task_id"]: ti for ti in d.api.tis(SENSOR_DAG, run_id) if ti["task_id"] in SENSOR_TASKS}
        for task_id, ti in tis.items():
            if ti["state"] in ("success", "failed", "upstream_failed", "skipped"):
                raise DeploymentTestError(f"{task_id} ended {ti['state']} before the session existed")
        return tis if len(tis) == len(SENSOR_TASKS) and all(t["state"] == "deferred" for t in tis.values()) else None

    tis = d.wait_for(f"{SENSOR_DAG}/{run_id}: {' and '.join(SENSOR_TASKS)} deferred", deferred, 240, 0.5)
    for task_id, ti in tis.items():
        d.deferrals.append(f"{run_id} {task_id}: seen deferred (try {ti['try_number']})")
    d.ok(f"{' and '.join(SENSOR_TASKS)} of {run_id} are in state deferred (REST API)")


def trigger_rows(d: Deployment, run_id: str) -> dict[str, tuple[int, str, int | None, str | None]]:
    """``{task_id: (trigger id, classpath, triggerer job id, next_method)}`` of the run's deferred TIs."""
    rows = d.query(
        "SELECT ti.task_id, t.id, t.classpath, t.triggerer_id, ti.next_method FROM task_instance ti "
        "JOIN trigger t ON t.id = ti.trigger_id WHERE ti.dag_id = %s AND ti.run_id = %s",
        (SENSOR_DAG, run_id),
    )
    return {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}


def check_triggers(d: Deployment, run_id: str) -> dict[str, int]:
    """The deferred TIs' trigger rows: our trigger class, ids + conn id only, each run by a triggerer."""
    rows = d.wait_for(
        f"the triggers of {run_id} to be assigned to a triggerer",
        lambda: r if len(r := trigger_rows(d, run_id)) == len(SENSOR_TASKS) and all(v[2] for v in r.values()) else None,
        60,
        0.5,
    )
    jobs = {}
    for task_id, (trigger_id, classpath, triggerer_id, next_method) in sorted(rows.items()):
        d.check(
            classpath == TRIGGER_CLASSPATH and next_method == "execute_complete",
            f"{task_id}: trigger {trigger_id} is {classpath.rsplit('.', 1)[1]}, the TI resumes in {next_method}",
        )
        kwargs = d.trigger_kwargs(trigger_id)
        expected_keys = {"scope", "identifier", "version", "candela_conn_id", "hook_params", "poll_interval",
                         "end_time"}  # fmt: skip
        d.check(
            set(kwargs) == expected_keys and not d.leaked_secrets(kwargs),
            f"{task_id}: trigger kwargs hold ids, conn id ({kwargs.get('candela_conn_id')}), hook params and timing "
            "only, no credential",
        )
        d.deferrals.append(f"{run_id} {task_id}: trigger {trigger_id} run by triggerer job {triggerer_id}")
        jobs[task_id] = int(triggerer_id)  # type: ignore[arg-type]
    return jobs


def wait_triggers_running(d: Deployment, run_id: str, jobs: dict[str, int]) -> None:
    """Each trigger has started in its triggerer job (that job's trigger log says so)."""
    for task_id, job in jobs.items():
        path = d.trigger_log(SENSOR_DAG, run_id, task_id, job)
        d.wait_for(
            f"triggerer job {job} to run the trigger of {task_id} ({path.name})",
            lambda path=path: path.exists() and "starting" in path.read_text(errors="replace"),
            60,
            0.5,
        )


def wait_silent_waiters_deferred(d: Deployment, run_id: str, timeout: float = 180) -> dict[int, tuple[int, int]]:
    """``{map_index: (trigger id, triggerer job id)}`` once every mapped ``wait`` of the run is deferred to a
    ``CandelaSessionExistsTrigger`` that a triggerer runs; fails at once if one is in any other state than
    deferred or not yet scheduled (it went to a worker, or its trigger fired).  ``timeout=0``: look once."""

    def deferred() -> dict[int, tuple[int, int]] | None:
        rows = d.query(
            "SELECT ti.map_index, ti.state, t.id, t.classpath, t.triggerer_id FROM task_instance ti "
            "LEFT JOIN trigger t ON t.id = ti.trigger_id WHERE ti.dag_id = %s AND ti.run_id = %s",
            (SILENT_DAG, run_id),
        )
        if others := sorted({state for _, state, *_ in rows if state not in (None, "deferred")}):
            raise DeploymentTestError(f"{SILENT_DAG}/{run_id}: tasks in state(s) {others}, not deferred")
        if len(rows) != SILENT_WAITERS or any(row[1] != "deferred" or row[4] is None for row in rows):
            return None
        if classpaths := {row[3] for row in rows} - {TRIGGER_CLASSPATH}:
            raise DeploymentTestError(f"{SILENT_DAG}/{run_id}: triggers of class(es) {classpaths}")
        return {int(row[0]): (int(row[2]), int(row[4])) for row in rows}

    if timeout == 0:
        found = deferred()
        if found is None:
            raise DeploymentTestError(f"{SILENT_DAG}/{run_id}: not every mapped task is deferred any more")
        return found
    waiters = d.wait_for(f"{SILENT_WAITERS} mapped tasks of {SILENT_DAG} deferred to a triggerer", deferred, timeout, 1)
    d.ok(f"{SILENT_DAG} {run_id}: {SILENT_WAITERS} mapped tasks deferred by the scheduler (no worker ran them)")
    return waiters


def check_silent_trigger_kwargs(d: Deployment, trigger_ids: set[int], pat: str) -> None:
    """The trigger rows carry the tasks' hook_params and the connection id, and no credential."""
    kwargs = [d.trigger_kwargs(trigger_id) for trigger_id in sorted(trigger_ids)]
    wanted = {"hook_params": SILENT_HOOK_PARAMS, "candela_conn_id": SILENT_CONN_ID}
    wrong = [k for k in kwargs if {key: k.get(key) for key in wanted} != wanted]
    leaked = [k for k in kwargs if d.leaked_secrets(k) or pat in json.dumps(k, default=str)]
    d.check(
        not wrong and not leaked,
        f"all {len(kwargs)} trigger rows carry the tasks' hook_params {SILENT_HOOK_PARAMS} and conn id "
        f"{SILENT_CONN_ID}, no credential (first: {kwargs[0] if kwargs else None}; wrong: {wrong[:1]})",
    )


def wait_silent_triggers_running(d: Deployment, run_id: str, job: int) -> None:
    """Every mapped task's trigger has started in triggerer job ``job`` (its trigger log says so)."""
    task_dir = d.ti_log(SILENT_DAG, run_id, "wait").parent

    def started() -> int | None:
        logs = list(task_dir.glob(f"map_index=*/attempt=*.log.trigger.{job}.log"))
        count = sum("starting" in path.read_text(errors="replace") for path in logs)
        return count if count == SILENT_WAITERS else None

    d.wait_for(f"triggerer job {job} to start all {SILENT_WAITERS} Candela triggers", started, 180, 1)
    d.ok(f"triggerer job {job} runs all {SILENT_WAITERS} Candela triggers (each trigger log says it started)")


def check_probe(d: Deployment, run_id: str, job: int) -> None:
    """The probe's trigger ran in triggerer job ``job``; its ``to_thread`` call ran on the loop's default executor."""
    thread = xcom_value(d, PROBE_DAG, run_id, "probe")
    logs = sorted(path.name for path in d.ti_log(PROBE_DAG, run_id, "probe").parent.glob("attempt=*.log.trigger.*.log"))
    d.check(
        logs == [f"attempt=1.log.trigger.{job}.log"] and isinstance(thread, str) and thread.startswith("asyncio"),
        f"the probe's trigger ran in triggerer job {job} beside the Candela triggers ({logs}); its to_thread call "
        f"was answered by {thread!r}, a thread of the loop's default executor",
    )


def check_silent_connections(d: Deployment, seen: SilentStats, threads: int) -> None:
    """The silent Candela saw the Candela triggers' own threads only, each still waiting with the task's timeout."""
    d.check(
        seen.accepted == seen.open == seen.most_open == threads and seen.closed_by_client == 0,
        f"the silent Candela saw {seen.accepted} connections ({seen.most_open} at most at once, {seen.open} open, "
        f"{seen.closed_by_client} closed by the triggerer): the Candela triggers' {threads} threads (trigger_threads) "
        "and no more",
    )
    d.check(
        seen.oldest_open_seconds > SILENT_CONN_READ_TIMEOUT,
        f"the triggerer's reads waited {seen.oldest_open_seconds:.0f} s, beyond the connection's read timeout "
        f"({SILENT_CONN_READ_TIMEOUT} s): the trigger's hook reads with the task's hook_params (600 s, no retry)",
    )


def check_deferral_recorded(d: Deployment, run_id: str) -> None:
    """After the run: Airflow's event log shows each sensor deferred once, and it resumed without a retry."""
    for task_id in SENSOR_TASKS:
        events = d.api.events(SENSOR_DAG, run_id, task_id)
        ti = d.api.ti(SENSOR_DAG, run_id, task_id)
        d.check(
            events.count("deferred") == 1 and ti is not None and ti["try_number"] == 1 and ti["state"] == "success",
            f"event log of {task_id}: {events} (deferred once, resumed in try 1)",
        )
