"""The README's main job runs end to end on real data and learns."""

import re
import subprocess
import sys


def test_demo_trains_on_real_digits(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "datalflash", "demo", "--workdir", str(tmp_path), "--epochs", "10"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    accuracy = float(re.search(r"test accuracy after 10 epochs: ([0-9.]+)", result.stdout).group(1))
    assert accuracy >= 0.9
    assert (tmp_path / "digits_store" / "manifest.json").is_file()
    assert "samples/s" in result.stdout
    assert f"the stores are kept in {tmp_path.resolve()}" in result.stdout


def test_image_demo_trains_on_real_photographs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "datalflash", "demo", "--images", "--workdir", str(tmp_path), "--epochs", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    accuracy = float(re.search(r"test accuracy after 4 epochs: ([0-9.]+)", result.stdout).group(1))
    assert accuracy >= 0.9
    assert (tmp_path / "photo_store" / "manifest.json").is_file()
    assert "images/s" in result.stdout
