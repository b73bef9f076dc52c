"""Read-only and shared stores: a read-only bind mount, four processes at once, and sshfs."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from datalflash.core import ChunkedDataset, FlashDataLoader
from datalflash.utils import DatasetConverter

N = 600


def expected_rows():
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (N, 3, 8, 8), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module", params=["zarr", "hdf5", "memmap"])
def store(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"shared-{request.param}") / "store"
    DatasetConverter.create_chunked_dataset(
        TensorDataset(expected_rows(), torch.arange(N)),
        path,
        chunk_size=64,
        split_ratios={"train": 1.0},
        backend=request.param,
        progress=False,
    )
    return path


def train_epoch_checking_every_sample(path, **loader_kw):
    """An epoch over the store's train split; every sample compared with its source row."""
    rows = expected_rows()
    loader = FlashDataLoader(ChunkedDataset(path, "train"), batch_size=50, shuffle=True, seed=1, **loader_kw)
    model = torch.nn.Linear(3 * 8 * 8, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []
    for images, index in loader:
        assert torch.equal(images, rows[index])
        loss = torch.nn.functional.cross_entropy(model(images.flatten(1).float() / 255), index % 10)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(N))
    loader.close()
    loader.dataset.store.close()  # let go of its files (a mount can then be unmounted)


def tree_state(path):
    """Names, sizes and mtimes of everything under ``path``."""
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))


def unmount(mountpoint, seconds=5.0):
    """Unmount, giving processes that are exiting (the loader's workers) up to ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def can_mount():
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.mark.skipif(not can_mount(), reason="bind mounts need root")
def test_reading_never_writes_inside_the_store(store, tmp_path):
    mountpoint = tmp_path / "ro"
    mountpoint.mkdir()
    if subprocess.run(["mount", "--bind", str(store), str(mountpoint)], capture_output=True).returncode != 0:
        pytest.skip("mount --bind is not permitted here")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(mountpoint)], capture_output=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only: {ro.stderr.decode()}")
        with pytest.raises(OSError):
            (mountpoint / "probe").write_text("x")  # the mount really is read-only
        before = tree_state(store)
        train_epoch_checking_every_sample(mountpoint)
        train_epoch_checking_every_sample(mountpoint, num_workers=2)
        assert tree_state(store) == before
    finally:
        if not unmount(mountpoint):
            subprocess.run(["umount", "-l", str(mountpoint)])
            pytest.fail("the store was still open after the loader was closed")


def test_four_processes_read_one_store_at_once(store):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_shared import train_epoch_checking_every_sample
        train_epoch_checking_every_sample({str(store)!r})
        print("ok")
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshfs_mount(tmp_path):
    """Mount ``tmp_path/remote`` read-only at ``tmp_path/mnt`` through sshd on 127.0.0.1."""
    for tool in ("sshd", "sshfs", "ssh-keygen", "fusermount"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} is not installed (Debian packages openssh-server and sshfs)")
    if not Path("/dev/fuse").exists():
        pytest.skip("no /dev/fuse")
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    auth = keys / "authorized_keys"
    auth.write_text((keys / "client.pub").read_text())
    os.chmod(auth, 0o600)
    port = free_port()
    config = keys / "sshd_config"
    config.write_text(
        textwrap.dedent(f"""
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {keys / "host"}
        AuthorizedKeysFile {auth}
        PasswordAuthentication no
        PermitRootLogin yes
        StrictModes no
        UsePAM no
        Subsystem sftp internal-sftp
        PidFile {keys / "sshd.pid"}
    """)
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    daemon = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    remote, mnt = tmp_path / "remote", tmp_path / "mnt"
    remote.mkdir()
    mnt.mkdir()
    try:
        for _ in range(50):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        user = os.environ.get("USER") or "root"
        ssh_opts = (
            f"IdentityFile={keys / 'client'},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,port={port},ro"
        )
        mounted = subprocess.run(
            ["sshfs", f"{user}@127.0.0.1:{remote}", str(mnt), "-o", ssh_opts],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if mounted.returncode != 0:
            pytest.skip(f"sshfs could not mount here: {mounted.stderr.strip()[:300]}")
        yield remote, mnt
        subprocess.run(["fusermount", "-u", str(mnt)], check=True)
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def test_training_from_a_store_mounted_over_sshfs(store, sshfs_mount):
    remote, mnt = sshfs_mount
    shutil.copytree(store, remote / "store")
    digest = hashlib.sha256((remote / "store" / "manifest.json").read_bytes()).hexdigest()
    assert hashlib.sha256((mnt / "store" / "manifest.json").read_bytes()).hexdigest() == digest
    with pytest.raises(OSError):
        (mnt / "store" / "probe").write_text("x")  # mounted read-only
    train_epoch_checking_every_sample(mnt / "store", read_ahead_bytes=2**20)
