"""The one image's entry point and health probe, without a container."""

from __future__ import annotations

import urllib.error

import pytest

from parley_common.image import Probe, service_module


def test_the_image_runs_the_service_it_was_built_for() -> None:
    assert service_module("session") == "parley_session"
    with pytest.raises(SystemExit, match="PARLEY_SERVICE"):
        service_module("")


def test_the_probe_reads_its_port_from_the_variable_it_names() -> None:
    assert Probe.parse("grpc:GRPC_PORT", {"GRPC_PORT": "50052"}) == Probe("grpc", "50052")
    assert Probe.parse("http:METRICS_PORT", {"METRICS_PORT": "9103"}) == Probe("http", "9103")
    with pytest.raises(SystemExit, match="not set"):
        Probe.parse("http:PORT", {})
    with pytest.raises(SystemExit, match="expected"):
        Probe.parse("tcp:PORT", {"PORT": "1"})


def test_a_probe_of_nothing_listening_fails() -> None:
    with pytest.raises(urllib.error.URLError):
        Probe("http", "1").healthy()
