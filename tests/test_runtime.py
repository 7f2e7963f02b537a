"""Process-wide settings are scoped: set inside the block, restored after it (also after an error)."""

import pytest
import torch

from tim4rec.errors import ConfigError
from tim4rec.runtime import denormals_flushed, resolve_device, runtime_settings


def test_settings_apply_inside_and_are_restored_after():
    before_threads, before_flush = torch.get_num_threads(), denormals_flushed()
    with runtime_settings(threads=2, flush_denormal=True) as settings:
        assert torch.get_num_threads() == 2 and settings.threads == 2
        assert settings.flush_denormal == denormals_flushed()
    assert torch.get_num_threads() == before_threads and denormals_flushed() == before_flush


def test_settings_are_restored_after_an_error():
    before_threads, before_flush = torch.get_num_threads(), denormals_flushed()
    with pytest.raises(KeyboardInterrupt):
        with runtime_settings(threads=2, flush_denormal=True):
            raise KeyboardInterrupt
    assert torch.get_num_threads() == before_threads and denormals_flushed() == before_flush


def test_flush_off_is_reported_off():
    with runtime_settings(threads=1, flush_denormal=False) as settings:
        assert settings.flush_denormal is False and not denormals_flushed()


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu"])
def test_bad_device_names(name):
    with pytest.raises(ConfigError, match="device"):
        resolve_device(name)


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_default_thread_count_is_the_idle_cores():
    from tim4rec.runtime import default_threads, idle_cores, usable_cores

    assert 1 <= idle_cores(0.05) <= usable_cores()
    assert 1 <= default_threads() <= usable_cores()
