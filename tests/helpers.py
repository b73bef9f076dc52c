"""Small shared test helpers."""

from torch.utils.data import Dataset


class Samples(Dataset):
    """A map-style dataset over a list of ready-made samples."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]
