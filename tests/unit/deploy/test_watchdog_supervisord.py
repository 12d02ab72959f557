"""The watchdog against a real supervisord: a program that stops answering its gRPC health is restarted."""

import os
import subprocess
import sys
import textwrap
import time
import xmlrpc.client

import pytest
from supervisor.xmlrpc import SupervisorTransport

from deploy.platform import free_ports, grpc_health
from deploy.watchdog import Liveness, Target, XmlRpcSupervisor, check_once, grpc_probe

# Serves grpc.health.v1, then the first time it runs freezes itself (SIGSTOP): alive for supervisord,
# silent for its callers, as an event loop stalled in a regex is. The restarted one keeps answering.
PROGRAM = textwrap.dedent(
    """
    import os, signal, sys, time
    from concurrent import futures
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc
    port, marker = int(sys.argv[1]), sys.argv[2]
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    time.sleep(1.0)
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGSTOP)
    server.wait_for_termination()
    """
)


@pytest.fixture
def supervised(tmp_path):
    (port,) = free_ports(1)
    (tmp_path / "stuck.py").write_text(PROGRAM)
    socket_path = tmp_path / "s.sock"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            [unix_http_server]
            file={socket_path}
            [supervisord]
            logfile={tmp_path}/supervisord.log
            pidfile={tmp_path}/supervisord.pid
            childlogdir={tmp_path}
            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
            [program:stuck]
            command={sys.executable} {tmp_path}/stuck.py {port} {tmp_path}/froze-once
            startsecs=0
            stopwaitsecs=1
            redirect_stderr=true
            stdout_logfile={tmp_path}/stuck.log
            """
        )
    )
    subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)], check=True, timeout=30)
    rpc = xmlrpc.client.ServerProxy(
        "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{socket_path}")
    )
    try:
        yield rpc, socket_path, f"127.0.0.1:{port}", tmp_path / "froze-once"
    finally:
        pid = int((tmp_path / "supervisord.pid").read_text())
        rpc.supervisor.shutdown()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


def test_a_program_that_freezes_is_restarted_and_answers_again(supervised):
    rpc, socket_path, address, froze = supervised
    target = Target("stuck", grpc_probe(address, ""))
    liveness = Liveness(failures=2, start_grace_s=30)
    supervisor = XmlRpcSupervisor(socket_path)
    deadline = time.monotonic() + 40
    restarted: list[str] = []
    frozen_pid = None
    while not restarted:
        assert time.monotonic() < deadline, open(socket_path.parent / "stuck.log").read()
        if froze.exists() and frozen_pid is None:
            frozen_pid = rpc.supervisor.getProcessInfo("stuck")["pid"]
        restarted = check_once([target], liveness, supervisor, timeout_s=0.5, now=time.monotonic())
        time.sleep(0.2)
    while grpc_health(address) != "SERVING":
        assert time.monotonic() < deadline, "the restarted program never answered"
        time.sleep(0.2)
    info = rpc.supervisor.getProcessInfo("stuck")
    assert info["statename"] == "RUNNING" and info["pid"] != frozen_pid
