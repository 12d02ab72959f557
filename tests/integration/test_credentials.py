"""Every state-changing RPC asks who calls, through Envoy's internal listener and directly on its service's port:
without a token it is refused (UNAUTHENTICATED) and nothing changes; with the right one it goes through. Envoy's
public ingress does not route them at all."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral.miner.v1 import miner_pb2, miner_pb2_grpc
from spiral.router.v1 import admin_pb2, admin_pb2_grpc
from spiral.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from spiral_common import redis_access
from spiral_common.auth import bearer, operator_token
from spiral_common.specs import secret
from tests.helpers import reason_of

pytestmark = pytest.mark.integration


def _calls(channel: grpc.Channel, metadata) -> dict[str, object]:
    """Each state-changing call, made harmless where it gets through (a dry run, an unknown job)."""
    heads = head_pb2_grpc.HeadServiceStub(channel)
    trainer = trainer_pb2_grpc.TrainerServiceStub(channel)
    return {
        "head LoadAdapter": lambda: heads.LoadAdapter(
            head_pb2.LoadAdapterRequest(version="none"), metadata=metadata, timeout=30
        ),
        "trainer SubmitJob": lambda: trainer.SubmitJob(
            trainer_pb2.SubmitJobRequest(kind=trainer_pb2.JOB_KIND_MINE, time_budget_s=10**9), metadata=metadata
        ),  # refused for its budget once it gets through: nothing is queued either way
        "trainer CancelJob": lambda: trainer.CancelJob(trainer_pb2.CancelJobRequest(job_id="nope"), metadata=metadata),
        "miner Mine": lambda: miner_pb2_grpc.MinerServiceStub(channel).Mine(
            miner_pb2.MineRequest(dry_run=True), metadata=metadata, timeout=120
        ),
        "router SetCanaryWeight": lambda: admin_pb2_grpc.AdminServiceStub(channel).SetCanaryWeight(
            admin_pb2.SetCanaryWeightRequest(percent=5), metadata=metadata
        ),
    }


def _direct(platform, name: str) -> str:
    s = platform.settings
    return str(
        {
            "head": s.head.head_addr,
            "trainer": s.trainer.trainer_addr,
            "miner": s.miner.miner_addr,
            "router": s.router.router_main_addr,
        }[name.split()[0]]
    )


def _jobs(platform) -> int:
    async def count() -> int:
        client = redis_access.operator_client(platform.settings)
        try:
            return int(await client.xlen(f"{platform.settings.redis.redis_prefix}jobs"))
        finally:
            await client.aclose()

    return asyncio.run(count())


@pytest.mark.parametrize("token", ["", "not-a-token"])
def test_without_the_right_token_every_state_change_is_refused_and_nothing_changes(platform, token):
    jobs_before = _jobs(platform)
    for via in ("envoy", "internal", "direct"):
        for name in _calls(grpc.insecure_channel("unused"), ()):
            address = {
                "envoy": platform.settings.envoy.envoy_addr,
                "internal": platform.settings.envoy.envoy_internal_addr,
            }.get(via) or _direct(platform, name)
            with grpc.insecure_channel(str(address)) as channel:
                with pytest.raises(grpc.RpcError) as caught:
                    _calls(channel, bearer(token))[name]()
            # The public ingress has no route for them (HTTP 404, UNIMPLEMENTED): they are not exposed there. The
            # internal listener refuses a call without a token itself (HTTP 401, no ErrorInfo); a wrong token
            # reaches the service, whose interceptor refuses it (BAD_CREDENTIALS), as on the service's own port.
            code = caught.value.code()
            expected = grpc.StatusCode.UNIMPLEMENTED if via == "envoy" else grpc.StatusCode.UNAUTHENTICATED
            assert code == expected, (via, name, code, caught.value.details())
            if via == "direct" or (via == "internal" and token):
                assert reason_of(caught.value)[1] in ("BAD_CREDENTIALS", "BAD_ADMIN_TOKEN"), (via, name)
    assert _jobs(platform) == jobs_before


def test_with_the_right_token_the_calls_go_through(platform):
    admin = bearer(operator_token(platform.settings))
    service = bearer(secret("SPIRAL_SERVICE_TOKEN", {"SPIRAL_ENV_FILE": str(platform.run / "secrets.env")}))
    with grpc.insecure_channel(platform.settings.envoy.envoy_internal_addr) as channel:
        for metadata in (admin, service):
            calls = _calls(channel, metadata)
            assert calls["head LoadAdapter"]().version == ""
            assert calls["miner Mine"]().prompts_read >= 0
            with pytest.raises(grpc.RpcError) as caught:
                calls["trainer CancelJob"]()
            assert reason_of(caught.value)[0] == grpc.StatusCode.NOT_FOUND  # past the door: the job is unknown


def test_the_running_platforms_files_are_its_owners_alone(platform):
    """Redis's data, the logs, the rendered configs (alertmanager.yml holds the receivers' keys), the secrets."""
    shared = [
        f"{path} {path.stat().st_mode & 0o777:o}"
        for path in [platform.run, *platform.run.rglob("*")]
        if not path.is_symlink() and not path.is_socket() and path.stat().st_mode & 0o077
    ]
    assert shared == []
