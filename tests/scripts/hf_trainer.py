"""Hugging Face ``Trainer`` training from a store split through a FlashDataLoader (its
``get_train_dataloader`` returns the loader), for 2 epochs; under torchrun each rank writes the
sample ids its model saw, in order."""

import json
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from datalflash.core import get_dataloaders

store, out = sys.argv[1], Path(sys.argv[2])
seen: list[int] = []


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, features, label, index):
        seen.extend(index.tolist())
        return {"loss": (self.linear(features).squeeze(1) - label).pow(2).mean()}


class FlashTrainer(Trainer):
    def get_train_dataloader(self):
        return get_dataloaders(store, batch_size=8, seed=0)["train"]


args = TrainingArguments(
    output_dir=str(out / "run"),
    num_train_epochs=2,
    per_device_train_batch_size=8,
    report_to=[],
    use_cpu=True,
    save_strategy="no",
    logging_strategy="no",
    remove_unused_columns=False,
    disable_tqdm=True,
)
trainer = FlashTrainer(model=Model(), args=args)
trainer.train()
(out / f"seen{trainer.args.process_index}.json").write_text(json.dumps(seen))
