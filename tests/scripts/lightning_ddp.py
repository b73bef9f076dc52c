"""Lightning DDP on CPU (gloo, 2 processes) over a store split, each rank recording the sample
ids it trains on. ``--build before``: the loader is built before ``fit`` (the common form);
``inside``: in ``train_dataloader``. ``--stop N`` stops after N steps, checkpointed mid-epoch
by ``ModelCheckpoint``; ``--resume CKPT`` continues from it (the loader's state travels in it)."""

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from datalflash.core import get_dataloaders

parser = argparse.ArgumentParser()
parser.add_argument("store")
parser.add_argument("out")
parser.add_argument("--build", choices=["before", "inside"], default="before")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--stop", type=int, default=-1)
parser.add_argument("--resume", default=None)
args = parser.parse_args()
out = Path(args.out)


def loader():
    return get_dataloaders(args.store, batch_size=8, seed=7)["train"]


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        x, _, index = batch
        self.seen.setdefault(self.current_epoch, []).extend(index.tolist())
        return self.layer(x).pow(2).mean()

    def on_train_end(self):
        name = f"rank{self.global_rank}.json"
        (out / name).write_text(json.dumps({"seen": self.seen, "world": self.trainer.world_size}))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Inside(Recorder):
    def train_dataloader(self):
        return loader()


model = Inside() if args.build == "inside" else Recorder()
trainer = L.Trainer(
    accelerator="cpu",
    devices=2,
    strategy="ddp",
    max_epochs=args.epochs,
    max_steps=args.stop,
    logger=False,
    enable_checkpointing=args.stop > 0,
    callbacks=[ModelCheckpoint(out, "stopped", every_n_train_steps=args.stop)] if args.stop > 0 else [],
    enable_progress_bar=False,
    enable_model_summary=False,
)
data = None if args.build == "inside" else loader()
trainer.fit(model, train_dataloaders=data, ckpt_path=args.resume)
