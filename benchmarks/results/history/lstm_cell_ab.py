"""A/B of the LSTM teacher's cell inside whole teacher rounds (issue 5): the autograd cell of commit a084024
against today's fused cell with its hand-written backward, alternated round by round in one process.

    OMP_NUM_THREADS=1 python benchmarks/results/history/lstm_cell_ab.py
"""

import statistics
import time

import torch
from torch import nn

import dynaloss.teachers.lstm as lstm_module
from dynaloss.losses.pairwise import PairwiseDLN
from dynaloss.models import MNIST1DCNN
from dynaloss.teacher import Teacher


def autograd_cell(x, h, c, cell: nn.LSTMCell):
    """The cell of commit a084024: one product of [x, h], three sigmoids and two tanhs, differentiated by autograd."""
    weight = torch.cat([cell.weight_ih, cell.weight_hh], dim=1)
    gates = torch.addmm(cell.bias_ih + cell.bias_hh, torch.cat([x, h], dim=1), weight.T)
    in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, dim=1)
    new_c = torch.sigmoid(forget_gate) * c + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
    return torch.sigmoid(out_gate) * torch.tanh(new_c), new_c


torch.set_num_threads(1)
torch.manual_seed(0)
fused_cell = lstm_module.lstm_cell
student, teacher = MNIST1DCNN(), Teacher(PairwiseDLN(10), steps=10)
generator = torch.Generator().manual_seed(0)
train = [
    (torch.randn(25, 1, 40, generator=generator), torch.randint(10, (25,), generator=generator)) for _ in range(20)
]
val = [(torch.randn(100, 1, 40, generator=generator), torch.randint(10, (100,), generator=generator))]
seconds = {"autograd cell (a084024)": [], "fused cell": []}
cells = {"autograd cell (a084024)": autograd_cell, "fused cell": fused_cell}
for index in range(44):
    order = list(cells) if index % 2 else list(reversed(cells))
    for name in order:
        lstm_module.lstm_cell = cells[name]
        started = time.perf_counter()
        teacher.step(student, iter(train), iter(val))
        if index >= 4:
            seconds[name].append(time.perf_counter() - started)
for name, values in seconds.items():
    print(f"{name}: median {statistics.median(values) * 1000:.1f} ms per round (N = 10, {len(values)} rounds)")
