"""Record your own PyTorch training loop into an ndt_store store.

Run ``python examples/record_your_model.py --help``; e.g.
``python examples/record_your_model.py --out runs --steps 300``.
The loop is an ordinary one; the lines marked ``# <-`` are all the Recorder adds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import ndt_store
from ndt_store.capture import JumpPolicy, Recorder

parser = argparse.ArgumentParser(description="Record a small PyTorch training loop.")
parser.add_argument("--out", help="folder for runs.zarr (default: a new temporary folder)")
parser.add_argument("--steps", type=int, default=300, help="training steps (300)")
args = parser.parse_args()

try:
    import torch
    from torch import nn
except ImportError:
    sys.exit("this example trains a PyTorch model: pip install torch==2.13.0")

out = args.out or tempfile.mkdtemp()
steps = args.steps
torch.manual_seed(0)
torch.set_num_threads(1)

# a small classifier on random data, just to have a loop
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = torch.randn(2048, 20), torch.randint(0, 5, (2048,))
probe = (x[:128], y[:128])  # a fixed probe batch (inputs, labels)

store = ndt_store.open_store(f"{out}/runs.zarr")  # <-
with Recorder(  # <-
    store, "my_mlp", model, probe=probe, every=5, snapshot_steps=[0, steps // 2, steps - 1],
    jump_snapshots=JumpPolicy(max_count=6), dataset="random", total_steps=steps,
) as rec:  # fmt: skip
    print(rec.describe_estimate())
    for step in range(rec.start_step, steps):
        i = (step * 64) % 2048
        loss = nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        loss.backward()
        opt.step()
        rec.step(step, loss=loss)  # <- after backward, before zero_grad
        opt.zero_grad()

print(store.phase1("my_mlp"))
print("snapshot steps:", store.snapshot_steps("my_mlp"))
print("weights:", list(store.weights("my_mlp")))
