"""API-key logic without HTTP: which paths are guarded, where keys come from, how they compare."""

from pathlib import Path

import pytest

from digitserve.auth import challenge, key_ring, presented_keys, read_key_file

KEY = "k" * 16 + "-first"
OTHER = "o" * 16 + "-second"


def test_no_keys_means_no_ring() -> None:
    assert key_ring([]) is None


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="1 API key"):
        key_ring([KEY, "short"])


def test_ring_accepts_each_key_and_nothing_else() -> None:
    ring = key_ring([KEY, OTHER, KEY])
    assert ring is not None
    assert len(ring.digests) == 2
    assert ring.accepts(KEY)
    assert ring.accepts(OTHER)
    for wrong in ("", KEY[:-1], KEY + "x", KEY.upper(), "\udcff" * 20):
        assert not ring.accepts(wrong)


def test_ring_admits_a_request_only_if_every_key_it_sent_is_good() -> None:
    ring = key_ring([KEY, OTHER])
    assert ring is not None
    assert ring.admits([KEY])
    assert ring.admits([KEY, OTHER])
    assert not ring.admits([])
    assert not ring.admits([KEY, "wrong"])
    assert not ring.admits(["", KEY])


def test_guarded_paths() -> None:
    ring = key_ring([KEY])
    assert ring is not None
    for path in ("/", "/v1", "/v1/models", "/v1/models/digits:predict", "/v2/models", "/x"):
        assert ring.guards(path), path
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/docs-assets/a.js", "/openapi.json"):
        assert not ring.guards(path), path
    strict = key_ring([KEY], protect_probes=True)
    assert strict is not None
    assert strict.guards("/healthz")
    assert strict.guards("/metrics")
    assert not strict.guards("/docs")


@pytest.mark.parametrize(
    ("headers", "keys"),
    [
        ([("authorization", f"Bearer {KEY}")], [KEY]),
        ([("Authorization", f"bearer   {KEY} ")], [KEY]),
        ([("x-api-key", f" {KEY}")], [KEY]),
        ([("authorization", f"Bearer {KEY}"), ("x-api-key", OTHER)], [KEY, OTHER]),
        ([("authorization", "Basic dXNlcjpwYXNz"), ("x-api-key", KEY)], ["", KEY]),
        ([("authorization", "Bearer "), ("x-api-key", "")], ["", ""]),
        ([("authorization", ""), ("x-api-key", KEY)], ["", KEY]),
        ([("x-api-key", "bad"), ("X-API-Key", KEY)], ["bad", KEY]),
        ([("authorization", "Bearer bad"), ("authorization", f"Bearer {KEY}")], ["bad", KEY]),
        ([("x-api-key", KEY), ("content-type", "image/png"), ("x-api-key", KEY)], [KEY, KEY]),
        ([], []),
    ],
)
def test_presented_keys_are_every_credential_header_sent(
    headers: list[tuple[str, str]], keys: list[str]
) -> None:
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    assert presented_keys(raw) == keys


def test_a_repeated_credential_header_with_one_bad_key_is_not_admitted() -> None:
    ring = key_ring([KEY, OTHER])
    assert ring is not None
    for headers in (
        [(b"x-api-key", b"bad"), (b"x-api-key", KEY.encode())],
        [(b"x-api-key", KEY.encode()), (b"x-api-key", b"bad")],
        [(b"authorization", b"Bearer bad"), (b"authorization", f"Bearer {KEY}".encode())],
    ):
        assert not ring.admits(presented_keys(headers)), headers
    both = [(b"x-api-key", KEY.encode()), (b"authorization", f"Bearer {OTHER}".encode())]
    assert ring.admits(presented_keys(both))


def test_key_file_skips_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-11\n{KEY}\n\n   {OTHER}  \n  # old one\n")
    assert read_key_file(path) == [KEY, OTHER]


def test_challenge_says_whether_a_key_was_sent() -> None:
    assert challenge([]) == 'Bearer realm="digitserve"'
    assert challenge(["x"]) == 'Bearer realm="digitserve", error="invalid_token"'
