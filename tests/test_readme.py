"""Every Python block of the READMEs (English and Spanish) runs as written, in order, in one fresh directory (later
blocks read the stores earlier ones wrote), each in its own interpreter as a user would paste it;
a block that says to run it under ``torchrun`` runs there, on 2 CPU processes. The image block's
folder (the user's photos) is made from scikit-learn's photographs first."""

import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from helpers import torchrun

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = {
    name: re.findall(r"^```python\n(.*?)^```", (ROOT / name).read_text(encoding="utf-8"), flags=re.S | re.M)
    for name in ("README.md", "README.es.md")
}
TORCHRUN = re.compile(r"^# (\S+\.py), run as: torchrun --nproc_per_node=(\d+) \1")


def make_photos(root: Path, n: int = 40) -> None:
    """``root/<class>/*.jpg``: pieces of scikit-learn's two photographs."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    for name, photo in zip(("china", "flower"), load_sample_images().images):
        (root / name).mkdir(parents=True)
        for i in range(n // 2):
            Image.fromarray(photo[i * 5 : i * 5 + 240, i * 8 : i * 8 + 320]).save(root / name / f"{i}.jpg")


def test_the_readmes_have_the_blocks_this_test_runs():
    assert len(BLOCKS["README.md"]) >= 8
    assert sum(bool(TORCHRUN.match(block)) for block in BLOCKS["README.md"]) == 1
    strip = re.compile(r"\s*#.*$", flags=re.M)  # (the translation changes comments only)
    assert [strip.sub("", b) for b in BLOCKS["README.es.md"]] == [strip.sub("", b) for b in BLOCKS["README.md"]]


WORKDIRS: dict[str, Path] = {}


def workdir(readme, tmp_path_factory):
    """The directory every block of ``readme`` runs in, with the user's photos in ``data/photos``."""
    if readme not in WORKDIRS:
        WORKDIRS[readme] = root = tmp_path_factory.mktemp("readme")
        if find_spec("sklearn") is not None:
            make_photos(root / "data" / "photos")
    return WORKDIRS[readme]


@pytest.mark.parametrize("readme,k", [(name, k) for name, blocks in BLOCKS.items() for k in range(len(blocks))])
def test_readme_block_runs_as_written(tmp_path_factory, readme, k):
    """Block ``k`` of ``readme``, after its blocks ``0..k-1`` ran (in this order: pytest keeps it)."""
    block, workdir_ = BLOCKS[readme][k], workdir(readme, tmp_path_factory)
    for name in re.findall(r"^import (\w+)\s+# .*pip install", block, flags=re.M):
        pytest.importorskip(name, reason=f"README block {k} needs {name} (an optional extra)")
    if "data/photos" in block and not (workdir_ / "data" / "photos").is_dir():
        pytest.skip("the image block's photos come from scikit-learn, not installed")
    launch = TORCHRUN.match(block)
    if launch:
        script = workdir_ / launch.group(1)
        script.write_text(block)
        run = torchrun(int(launch.group(2)), script, cwd=workdir_)
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        run = subprocess.run(
            [sys.executable, "-c", block], cwd=workdir_, capture_output=True, text=True, timeout=300, env=env
        )
    assert run.returncode == 0, f"{readme} block {k}:\n{block}\n{run.stderr[-3000:]}"
