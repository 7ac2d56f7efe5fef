"""A private JetStream cluster on free local ports, for tests and benchmarks.

Every node listens for clients on 127.0.0.1:<free port> and for routes on
another, with its JetStream data in a folder of its own, so a node killed
with SIGKILL and started again comes back with its data, as on a real host.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import nats
from nats.js.api import StreamConfig

from devtools.process import free_port, wait_until_up
from devtools.servers import Nats, ServiceError
from jobsys.display import one_line
from jobsys.ops.probes import LOCAL_HOST

CLUSTER_NAME = "jobsys"
# How long a new cluster may take to elect its JetStream meta leader.
READY_TIMEOUT_S = 60.0
READY_STREAM = "devtools_cluster_ready"


@dataclass
class Node:
    """One nats-server of the cluster."""

    name: str
    port: int
    route_port: int
    store: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{LOCAL_HOST}:{self.port}"


class NatsCluster:
    """`size` nats-servers with JetStream, routed to each other."""

    def __init__(self, root: Path, size: int = 3, binary: Path | None = None) -> None:
        self.root = root
        self.binary = binary or Nats().binary(Nats.MACHINE)
        self.nodes = [
            Node(f"n{i + 1}", free_port(), free_port(), root / f"n{i + 1}") for i in range(size)
        ]

    @property
    def url(self) -> str:
        """The JOBSYS_NATS_URL of the cluster: every node, comma-separated."""
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> Node:
        """The node whose server name is `name`."""
        return next(n for n in self.nodes if n.name == name)

    def start_node(self, node: Node) -> None:
        """Start (or restart) one node with its data folder."""
        node.store.mkdir(parents=True, exist_ok=True)
        routes = ",".join(f"nats://{LOCAL_HOST}:{n.route_port}" for n in self.nodes if n != node)
        cmd = [
            str(self.binary), "-a", LOCAL_HOST, "-p", str(node.port), "-n", node.name,
            "-js", "-sd", str(node.store),
            "--cluster_name", CLUSTER_NAME,
            "--cluster", f"nats://{LOCAL_HOST}:{node.route_port}", "--routes", routes,
        ]  # fmt: skip
        log = (self.root / f"{node.name}.log").open("ab")
        node.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        error = wait_until_up("nats", node.url, node.proc)
        if error is not None:
            raise ServiceError(f"NATS node {node.name} did not come up: {error}")

    def kill_node(self, node: Node, sig: int = signal.SIGKILL) -> None:
        """Stop one node the hard way (SIGKILL: no goodbye to its peers)."""
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)
            node.proc.wait(30)
        node.proc = None

    def start(self) -> NatsCluster:
        """Start every node and wait until JetStream answers through the cluster."""
        self.root.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            self.start_node(node)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until JetStream can place a stream on every node (all peers known)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                asyncio.run(self._account_info())
                return
            except Exception as exc:
                last = one_line(exc)
                time.sleep(0.5)
        raise ServiceError(f"JetStream cluster not ready after {timeout:.0f}s: {last}")

    async def _account_info(self) -> None:
        nc = await nats.connect(self.url.split(","), connect_timeout=2, allow_reconnect=False)
        try:
            js = nc.jetstream(timeout=5)
            # A stream replicated on every node can be placed only once the
            # meta leader knows all peers.
            probe = StreamConfig(name=READY_STREAM, subjects=[READY_STREAM],
                                 num_replicas=len(self.nodes))  # fmt: skip
            await js.add_stream(probe)
            await js.delete_stream(READY_STREAM)
        finally:
            await nc.close()

    def stop(self) -> None:
        """Stop every node (SIGTERM)."""
        for node in self.nodes:
            self.kill_node(node, signal.SIGTERM)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
