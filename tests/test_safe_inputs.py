"""Inputs that could write outside their place or destroy a user's files (issue 16)."""

from __future__ import annotations

import pytest

from edgeprune.errors import ConfigError

BAD_NAMES = ["../../etc/x", "/abs/path", "..", ".hidden", "-rf", "a/b", "a\\b", "", "x" * 65, "name with space"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_target_name_that_is_not_a_file_name_is_refused(tmp_path, name):
    """Mutant caught: Target.name without the file-name check (calibration JSON then landed at
    calibration_dir()/../../etc/x.json)."""
    from edgeprune.config.loader import validate_dict
    from edgeprune.config.target import Target

    with pytest.raises(ConfigError, match="name"):
        validate_dict({"version": 1, "name": name, "device": {"ram_gb": 8, "mem_bandwidth_gbs": 10}, "budget": {}},
                      Target, str(tmp_path / "t.yaml"))


def test_calibration_path_stays_in_its_folder_even_when_validation_was_skipped(tmp_path, monkeypatch):
    """Mutant caught: calibration_path joining the name unchecked."""
    from edgeprune.targets.calibration import calibration_dir, calibration_path

    monkeypatch.setenv("EDGEPRUNE_CALIBRATION", str(tmp_path / "cal"))
    for name in ("../../outside", "/tmp/abs", ".."):
        with pytest.raises(ConfigError):
            calibration_path(name, "local")
    assert calibration_path("arm16g", "ssh").parent == calibration_dir()
