"""Device profiles in targets/: every one loads, and broken ones fail with one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgevt.devices import list_profiles, load_profile, profiles_dir
from edgevt.errors import EdgevtError

REQUIRED_DEVICES = {"raspberry-pi-5", "pixel-8", "jetson-orin-nano", "iphone-15", "x86-host"}


def test_the_shipped_profiles_load_and_cover_the_devices_we_support() -> None:
    assert REQUIRED_DEVICES <= set(list_profiles())
    for name in list_profiles():
        profile = load_profile(name)
        assert profile.name == name == profile.path.stem
        assert profile.threads and all(t >= 1 for t in profile.threads)
    assert load_profile("jetson-orin-nano").backend == "tensorrt"
    assert "CPU_AND_NE" in load_profile("iphone-15").compute_units


def test_a_profile_path_works_and_bad_profiles_are_named(tmp_path: Path) -> None:
    mine = tmp_path / "my-board.toml"
    text = (profiles_dir() / "raspberry-pi-5.toml").read_text()
    mine.write_text(text.replace('"raspberry-pi-5"', '"my-board"'))
    assert load_profile(mine).name == "my-board"

    with pytest.raises(EdgevtError, match="unknown device 'rpi'; known: .*raspberry-pi-5"):
        load_profile("rpi")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [")
    with pytest.raises(EdgevtError, match="not valid TOML"):
        load_profile(broken)
    broken.write_text(text.replace("backend =", "bakend ="))
    with pytest.raises(EdgevtError, match="missing backend; unknown key.* bakend"):
        load_profile(broken)
    broken.write_text(text.replace('backend = "litert"', 'backend = "tvm"'))
    with pytest.raises(EdgevtError, match="backend 'tvm'"):
        load_profile(broken)
