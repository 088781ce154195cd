"""Scale-out set-up that needs no cluster: the address checked first, Ray's logging kept quiet."""

import logging
import socket
import time
import types

import pytest
from cli_checks import assert_one_error
from click.testing import CliRunner
from fault_clips import make_clip

from diva_numba.cli import cli
from diva_numba.errors import DeviceError
from diva_numba.run import scale_out
from diva_numba.run.scale_out import ScaleOut, cluster_host_port


def test_cluster_addresses_are_host_and_port():
    assert cluster_host_port("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert cluster_host_port("ray://head") == ("head", 10001)
    assert cluster_host_port("[::1]:7000") == ("::1", 7000)
    assert cluster_host_port("head:0") == ("head", 0)  # a port given is the port used
    for wrong in ("http://head:1", "head:port", "", "head:1/x"):
        with pytest.raises(DeviceError, match="not a Ray cluster address"):
            cluster_host_port(wrong)


@pytest.mark.parametrize("address", ["auto", "local"])
def test_addresses_ray_resolves_itself_are_not_dialled(monkeypatch, address):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'diva-numba[ray]')")

    def dial(*args, **kwargs):
        raise AssertionError(f"{address!r} is not a host to connect to")

    monkeypatch.setattr(socket, "create_connection", dial)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    scale_out.check_cluster(ScaleOut(workers=2, address=address))


def test_auto_is_the_address_in_the_environment_checked_like_any(monkeypatch):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'diva-numba[ray]')")
    address = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(DeviceError, match=f"at {address} \\(from RAY_ADDRESS\\)"):
        scale_out.check_cluster(ScaleOut(workers=2, address="auto"))


def test_workers_without_an_address_start_a_cluster_of_their_own(monkeypatch):
    # Not the one RAY_ADDRESS names, nor one an earlier run left on this machine.
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    seen = {}
    fake = types.SimpleNamespace(init=lambda **options: seen.update(options),
                                 shutdown=lambda: None)  # fmt: skip
    cpu = types.SimpleNamespace(is_cuda=False)
    with scale_out._cluster(fake, ScaleOut(workers=2), cpu, None):
        pass
    assert seen["address"] == "local" and seen["num_cpus"] == 2


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_cluster_is_one_error_at_once(tmp_path, tiny_model):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'diva-numba[ray]')")
    clip, style = make_clip(tmp_path)
    out = tmp_path / "out.mp4"
    address = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["transfer", str(style), str(clip), "-o", str(out),
                                      "--model", str(tiny_model), "--workers", "2",
                                      "--ray-address", address, "-q"])  # fmt: skip
    assert time.monotonic() - started < 30
    assert f"cannot reach the Ray cluster at {address}" in assert_one_error(result, 4)
    assert not out.exists() and not (tmp_path / "out.mp4.work").exists()


def test_rays_warnings_follow_quiet(caplog):
    def init(**options):
        logging.getLogger("ray._private.authentication").warning("Token authentication ...")

    fake = types.SimpleNamespace(init=init, shutdown=lambda: None)
    project = logging.getLogger("diva_numba")
    level, ray_level = project.level, logging.getLogger("ray").level
    try:
        for quiet, expected in ((True, []), (False, ["Token authentication ..."])):
            caplog.clear()
            project.setLevel(logging.ERROR if quiet else logging.INFO)
            with scale_out._cluster(fake, ScaleOut(address="ray://head"), None, None):
                pass
            said = [r.getMessage() for r in caplog.records if r.name.startswith("ray")]
            assert said == expected
    finally:
        project.setLevel(level)
    assert logging.getLogger("ray").level == ray_level  # as it was
