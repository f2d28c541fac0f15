"""Child process for the kill-and-resume test: trains, checkpoints, dies hard."""

import os
import signal
import sys

import torch

import clr_fused as cf


def build():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    opt = cf.Adam(m.parameters(), lr=cf.CyclicLR(1e-3, 1e-2, 4, 3, "triangular2"), backend="torch", max_grad_norm=1.0)
    return m, opt


def data(i):
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(8, 5, generator=g), torch.randn(8, 2, generator=g)


def train(m, opt, start, stop):
    for i in range(start, stop):
        x, y = data(i)
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()


if __name__ == "__main__":
    mode, path, kill_at, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    m, opt = build()
    if mode == "first":
        train(m, opt, 0, kill_at)
        torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, path)
        os.kill(os.getpid(), signal.SIGKILL)  # no clean shutdown
    else:
        ckpt = torch.load(path, weights_only=True)
        m.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        train(m, opt, kill_at, total)
        torch.save(m.state_dict(), path + ".final")
