"""Domain errors become gRPC statuses with exactly one ErrorInfo (and QuotaFailure / RetryInfo where due)."""

import grpc
from google.rpc import error_details_pb2, status_pb2

from spiral_common import errors
from spiral_common.grpc_service import to_rpc_status


def _details(status: grpc.Status) -> list:
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    return list(status_pb2.Status.FromString(raw).details)


def _unpack(details, kind):
    found = []
    for detail in details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def test_invalid_argument_carries_reason_domain_and_field():
    status = to_rpc_status(
        errors.InvalidArgument("bad", reason="INVALID_ROLE", field="messages[0].role"), "router.spiral"
    )
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    (info,) = _unpack(_details(status), error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "INVALID_ROLE",
        "router.spiral",
        {"field": "messages[0].role"},
    )


def test_budget_exceeded_is_resource_exhausted_with_quota_failure():
    error = errors.BudgetExceeded("pool spent", subject="daily_pool", limit_usd_micros=100_000)
    status = to_rpc_status(error, "router.spiral")
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = _details(status)
    assert _unpack(details, error_details_pb2.ErrorInfo)[0].reason == "BUDGET_EXCEEDED"
    assert _unpack(details, error_details_pb2.QuotaFailure)[0].violations[0].subject == "daily_pool"


def test_busy_head_is_resource_exhausted_with_retry_info():
    status = to_rpc_status(errors.HeadBusy("busy", retry_after_ms=500), "head.spiral")
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    (retry,) = _unpack(_details(status), error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 500


def test_each_error_kind_has_its_code():
    cases = {
        errors.Unauthenticated("x"): grpc.StatusCode.UNAUTHENTICATED,
        errors.NotFound("x"): grpc.StatusCode.NOT_FOUND,
        errors.FailedPrecondition("x"): grpc.StatusCode.FAILED_PRECONDITION,
        errors.Unavailable("x"): grpc.StatusCode.UNAVAILABLE,
        errors.NotImplementedYet("Vote", "the council"): grpc.StatusCode.UNIMPLEMENTED,
        errors.SpiralError("x"): grpc.StatusCode.INTERNAL,
    }
    for error, code in cases.items():
        assert to_rpc_status(error, "d").code == code
