"""generated/ must be exactly what `make proto` makes from protos/."""

from __future__ import annotations

from tools.genproto import stale_files


def test_generated_code_matches_the_proto() -> None:
    assert stale_files() == [], "generated/ is stale: run `make proto` and commit the result"


def test_published_import_line_works() -> None:
    from generated import ai_service_pb2, ai_service_pb2_grpc

    assert ai_service_pb2.DESCRIPTOR.package == "holysheepai"
    assert hasattr(ai_service_pb2_grpc, "AIServiceStub")
