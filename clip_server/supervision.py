"""Replica supervision: what `python -m clip_server` does while its Flow serves.

jina starts the gateway and each executor replica as a child process, then only waits
(`Flow.block()`). A replica that dies goes unnoticed: nothing is logged, it is never replaced,
the gateway keeps trying it first for its share of the requests (and retries them on the other
replicas, at a cost in latency), and closing the Flow waits `timeout_ctrl` (60 s) for each dead
replica's shutdown event, which a killed process never sets.

`supervise` takes the place of `Flow.block()` and looks at the Flow's processes every second:

- an executor replica that died is logged at ERROR and replaced by a new process started from
  the same arguments, so on the same port: the gateway's list of replica addresses stays valid,
  and the gateway, which opens a new channel to an address that failed, finds the new process
  there once it is up (until then it retries each request on another replica);
- when the Flow cannot go on (the gateway or a shard head died, a replacement failed to start,
  or one executor's replicas died more than MAX_DEATHS times within DEATH_WINDOW seconds, a
  crash loop that replacing would only repeat), that is logged at ERROR and ServingFailed is
  raised, so the command line stops the Flow and exits non-zero, and whatever supervises the
  server (Docker, systemd, Kubernetes) starts it afresh.

Before the Flow closes, however it stops, `release` reports each of its processes that has ended
(or ends meanwhile) as shut down, so that closing it does not wait for a dead process.

This relies on jina 3.27's orchestration internals: a Flow iterates over its Deployments, a
Deployment keeps its replicas in `shards[shard_id]._pods`, each Pod runs in the process
`pod.worker` and sets its multiprocessing events `is_ready` and `is_shutdown`.
"""

import logging
import math
import multiprocessing.connection
import signal
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator

from jina import Deployment, Flow
from jina.enums import PodRoleType
from jina.orchestrate.pods import BasePod
from jina.orchestrate.pods.factory import PodFactory

logger = logging.getLogger(__name__)

#: Seconds between two looks at the Flow's processes.
CHECK_SECONDS = 1.0
#: More deaths than this among one executor's replicas within DEATH_WINDOW seconds is a crash loop.
MAX_DEATHS = 3
DEATH_WINDOW = 60.0


class ServingFailed(Exception):
    """The Flow cannot go on serving: it is to be stopped, and the server to exit non-zero."""


def supervise(flow: Flow, interval: float = CHECK_SECONDS) -> None:
    """Serve the started `flow`, replacing the executor replicas that die, until KeyboardInterrupt.

    Returns on KeyboardInterrupt, as `Flow.block()` does; raises ServingFailed when the Flow
    cannot go on. Either way a replacement still loading is killed: it serves nothing yet, and
    closing the Flow would wait for it to load. Runs in the main thread, where the signals that
    stop the server raise KeyboardInterrupt.
    """
    supervisor = _Supervisor(flow)
    try:
        while True:
            time.sleep(interval)
            supervisor.check()
    except KeyboardInterrupt:
        pass
    finally:
        supervisor.stop_replacements()


def release(flow: Flow) -> None:
    """Let `flow.close()` return at once, whichever of the Flow's processes are dead or dying.

    jina's Pod.close() terminates a process and waits up to timeout_ctrl (60 s) for it to
    report its own shutdown, which a killed process never does: that is reported here for each
    process that has ended, and by a thread for each that ends while the Flow closes. A replica
    whose process a signal kept from starting is dropped: jina cannot terminate a process that
    never started.
    """
    for _, deployment in flow:
        for replica_set in deployment.shards.values():
            replica_set._pods[:] = [pod for pod in replica_set._pods if pod.worker.pid is not None]
    running = []
    for pod in _pods(flow):
        if _exited(pod):
            pod.is_shutdown.set()
        else:
            running.append(pod)
    threading.Thread(target=_report_exits, args=(running,), daemon=True).start()


class _Supervisor:
    def __init__(self, flow: Flow):
        self._flow = flow
        self._starting: dict[BasePod, float] = {}  # replacement -> monotonic deadline to be ready
        self._deaths: dict[str, deque[float]] = defaultdict(deque)  # executor -> monotonic times

    def check(self) -> None:
        """Replace each executor replica that died; raise ServingFailed if the Flow cannot go on."""
        for name, deployment in self._flow:
            for pod in _fixed_pods(deployment):
                if _exited(pod):
                    raise _failure(
                        f'executor {name}: {pod.name} (pid {pod.worker.pid}) {_how(pod)}; only replicas are replaced'
                    )
            for replica_set in deployment.shards.values():
                for index, pod in enumerate(replica_set._pods):
                    if pod in self._starting and not self._started(name, pod):
                        continue
                    if _exited(pod):
                        self._replace(name, replica_set._pods, index)

    def _started(self, executor: str, pod: BasePod) -> bool:
        """Whether the replacement `pod` is up (logged once); raise ServingFailed if it cannot be."""
        if pod.is_ready.is_set():  # jina's run() sets it once the replica serves
            del self._starting[pod]
            logger.info(f'executor {executor} replica {pod.args.replica_id} is up again (pid {pod.worker.pid})')
            return True
        if _exited(pod):
            raise _failure(
                f'the replacement of executor {executor} replica {pod.args.replica_id} ({_who(pod)}) '
                f'{_how(pod)} before it was ready'
            )
        if time.monotonic() > self._starting[pod]:
            raise _failure(
                f'the replacement of executor {executor} replica {pod.args.replica_id} '
                f'was not ready within timeout_ready ({pod.args.timeout_ready} ms)'
            )
        return False

    def _replace(self, executor: str, pods: list[BasePod], index: int) -> None:
        dead = pods[index]
        if dead.role == PodRoleType.GATEWAY:  # the gateway's own Deployment has one replica: the gateway
            raise _failure(f'the gateway ({_who(dead)}) {_how(dead)}; only executor replicas are replaced')
        what = f'executor {executor} replica {dead.args.replica_id} ({_who(dead)}) {_how(dead)}'
        now = time.monotonic()
        deaths = self._deaths[executor]
        deaths.append(now)
        while deaths[0] < now - DEATH_WINDOW:
            deaths.popleft()
        if len(deaths) > MAX_DEATHS:
            raise _failure(f'{what}: {len(deaths)} replica deaths within {DEATH_WINDOW:.0f} s, a crash loop')
        logger.error(f'{what}; starting a replacement on port {dead.args.port[0]}')
        # The replacement takes the dead pod's place before its process starts, so that a signal
        # arriving meanwhile finds every started process where flow.close() stops it.
        replacement = PodFactory.build_pod(dead.args)  # a copy, with noblock_on_start as jina set it
        pods[index] = replacement
        _retire(dead)
        timeout = dead.args.timeout_ready / 1e3 if dead.args.timeout_ready > 0 else math.inf
        self._starting[replacement] = now + timeout
        replacement.start()

    def stop_replacements(self) -> None:
        for pod in self._starting:
            if pod.worker.pid is not None:
                pod.worker.kill()
                pod.worker.join(timeout=5)


def _fixed_pods(deployment: Deployment) -> list[BasePod]:
    """The pods of `deployment` that are not replicas: a shard head, uses_before, uses_after."""
    return [p for p in (deployment.head_pod, deployment.uses_before_pod, deployment.uses_after_pod) if p is not None]


def _pods(flow: Flow) -> Iterator[BasePod]:
    for _, deployment in flow:
        yield from _fixed_pods(deployment)
        for replica_set in deployment.shards.values():
            yield from replica_set._pods


def _report_exits(pods: list[BasePod]) -> None:
    """Set each pod's shutdown event when its process ends.

    It waits on the processes' sentinels, which does not reap them: that stays with the main
    thread, where jina joins them.
    """
    running = {pod.worker.sentinel: pod for pod in pods}
    while running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            running.pop(sentinel).is_shutdown.set()


def _exited(pod: BasePod) -> bool:
    return pod.worker.exitcode is not None  # also reaps the process


def _who(pod: BasePod) -> str:
    return f'{pod.name}, pid {pod.worker.pid}'


def _how(pod: BasePod) -> str:
    code = pod.worker.exitcode
    if code < 0:
        return f'was killed by {signal.Signals(-code).name}'
    return f'exited with status {code}'


def _retire(pod: BasePod) -> None:
    """Close a dead pod through jina's own path, which returns at once once its shutdown is set."""
    pod.is_shutdown.set()
    pod.close()


def _failure(message: str) -> ServingFailed:
    logger.error(f'{message}; stopping the server')
    return ServingFailed(message)
