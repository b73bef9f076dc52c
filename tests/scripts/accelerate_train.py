"""Accelerate on CPU (2 processes under torchrun) over a store split: gradient accumulation over
an epoch whose batch count is not a multiple of the accumulation steps, and an evaluation that
gathers each sample's id with ``gather_for_metrics``. The train loader is built before the
``Accelerator`` (ranks unknown yet), the eval loader after it. Rank 0 writes what it saw; each
rank writes the batches ``accelerator.skip_first_batches(train, 3)`` gives of the next epoch and
those the loader gives of it."""

import json
import sys
from pathlib import Path

import torch

from datalflash.core import get_dataloaders

store, out, steps = sys.argv[1], Path(sys.argv[2]), 4
train = get_dataloaders(store, batch_size=4, seed=3)["train"]

from accelerate import Accelerator  # noqa: E402  (the loader above is built before Accelerate starts)

accelerator = Accelerator(cpu=True, gradient_accumulation_steps=steps)
evaluation = get_dataloaders(store, batch_size=4, shuffle=False)["train"]
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
model, optimizer, train, evaluation = accelerator.prepare(model, optimizer, train, evaluation)

batches = syncs = 0
for x, _, _ in train:
    with accelerator.accumulate(model):
        accelerator.backward(model(x).pow(2).mean())
        optimizer.step()
        optimizer.zero_grad()
    batches += 1
    syncs += accelerator.sync_gradients

gathered = []
for _, _, index in evaluation:
    gathered += accelerator.gather_for_metrics(index).tolist()

if accelerator.is_main_process:
    (out / "result.json").write_text(json.dumps({"batches": batches, "syncs": syncs, "gathered": gathered}))

skipped = [index.tolist() for _, _, index in accelerator.skip_first_batches(train, 3)]  # (the next epoch)
served = [index.tolist() for _, _, index in train]
(out / f"skip{accelerator.process_index}.json").write_text(json.dumps({"skipped": skipped, "served": served}))
