"""An array kept in a file and read by rows: the slice auto-encoder's training data.

The auto-encoder of Step I trains on the VGG-19 trunk output (N, 512, g, g) bfloat16 and the
32 x 32 thumbnail (N, 1, 32, 32) float32 of every slice of every training volume: 20 KiB a slice
at 128 px, 0.9 GiB for 60 volumes of 256^3 (and more than the volumes themselves when they are
small). A :class:`RowFile` holds such an array in a .npy file, written one volume's rows at a
time; every read copies out only what it asks for (the rows of a training batch, of one volume,
or a block of channels of every row) through a mapping dropped at once or plain reads, so the
file does not enter the resident set. The file lives in a temporary folder (``TMPDIR``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

READ_BYTES = 8 << 20  # a channel block is read this many bytes of rows at a time


class RowFile:
    """An array of ``shape`` (N, *row) and torch ``dtype`` stored at ``path`` (created, zeros).

    ``rf[index]`` (rows: an integer tensor or array, or a slice) and ``rf[:, channels]`` (a slice
    of axis 1 of every row) return tensors, like indexing a tensor of that shape.
    """

    def __init__(self, path: str | Path, shape: Sequence[int], dtype: torch.dtype = torch.float32):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        # numpy has no bfloat16: its bits are stored as int16
        self._storage = torch.int16 if dtype == torch.bfloat16 else dtype
        np_dtype = torch.empty(0, dtype=self._storage).numpy().dtype
        array = np.lib.format.open_memmap(self.path, "w+", np_dtype, self.shape)
        self._offset = int(array.offset)
        self._np_dtype = np_dtype
        self._row_items = int(np.prod(self.shape[1:], dtype=np.int64))
        del array

    def __len__(self) -> int:
        return self.shape[0]

    def write(self, start: int, rows: torch.Tensor) -> None:
        """Store ``rows`` (n, *row) as rows ``start`` .. ``start + n - 1``."""
        if tuple(rows.shape[1:]) != self.shape[1:] or start + len(rows) > len(self):
            raise ValueError(f"rows {tuple(rows.shape)} at {start} do not fit {self.shape}")
        data = rows.detach().cpu().contiguous().to(self.dtype).view(self._storage).numpy()
        with open(self.path, "r+b") as f:
            f.seek(self._offset + start * self._row_items * self._np_dtype.itemsize)
            data.tofile(f)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, tuple):
            rows, channels = index
            if rows != slice(None) or not isinstance(channels, slice):
                raise IndexError("a RowFile reads rows, or [:, a:b] channel blocks")
            return self._channels(channels)
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        mapped = np.load(self.path, mmap_mode="r")
        rows = np.array(mapped[index])
        del mapped  # unmapped here: the pages read leave the resident set
        return torch.from_numpy(rows).view(self.dtype)

    def _channels(self, channels: slice) -> torch.Tensor:
        n, sub = self.shape[0], self.shape[1:]
        width = len(range(*channels.indices(sub[0])))
        out = np.empty((n, width, *sub[1:]), self._np_dtype)
        step = max(1, READ_BYTES // (self._row_items * self._np_dtype.itemsize))
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            for r0 in range(0, n, step):
                r1 = min(n, r0 + step)
                block = np.fromfile(f, self._np_dtype, (r1 - r0) * self._row_items)
                out[r0:r1] = block.reshape(r1 - r0, *sub)[:, channels]
        return torch.from_numpy(out).view(self.dtype)
