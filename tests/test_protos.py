"""The committed stubs are exactly what the .proto files generate."""

from pathlib import Path

from reward_service.protos import REPO_ROOT, generate


def test_committed_stubs_match_the_proto_files(tmp_path: Path) -> None:
    generated = generate(tmp_path)
    assert generated, "protoc wrote nothing"
    for path in generated:
        committed = REPO_ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run python -m reward_service.protos"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run python -m reward_service.protos"
        )
