"""How the int8 state codec was chosen: code map and block size, measured.

1. Real Adam states: the char-level GPT (clr_fused/demos/charlm.py) trained
   with fp32 AdamW; its exp_avg / exp_avg_sq after 50, 200 and 600 steps are
   quantized with each candidate (map x block size) and the Adam update
   direction m / (sqrt(v) + eps) compared with the fp32 one: relative L2
   error, and the share of elements whose v decodes to 0 beside a non-zero
   m (the update then divides by eps: the failure of linear maps).
2. Training: the same LM with its states replaced after every step by their
   quantize-then-decode through each candidate (block 128; same seeds),
   final validation loss.

Candidates: linear (x = scale * q / 127, v too), the power maps clr_fused
uses (m: scale * a|a|, v: scale * a^4), and bitsandbytes' / torchao's
dynamic tree map (signed for m, unsigned for v; looked up by nearest code).
Run: python benchmarks/int8_codec_choice.py [--steps 600] (about 15 min on
the 2-core CPU machine).  Writes benchmarks/results/int8-codec-<date>.json/.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics

import torch

import clr_fused as cf
from clr_fused.demos import charlm as c


# ------------------------------------------------------------------ candidate codecs (1-D, memory order)
def _blocks(x, block):
    n = x.numel()
    nb = (n + block - 1) // block
    pad = torch.zeros(nb * block)
    pad[:n] = x
    return pad.view(nb, block), n


def linear(x, signed, block):
    b, n = _blocks(x, block)
    s = b.abs().amax(1, keepdim=True)
    inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))
    levels = 127.0 if signed else 255.0
    q = torch.round(b * inv * levels)
    return (q / levels * s).reshape(-1)[:n]


def power(x, signed, block):
    b, n = _blocks(x, block)
    s = b.abs().amax(1, keepdim=True)
    inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))
    if signed:
        a = torch.round(torch.sqrt(b.abs() * inv) * 127) / 127
        return (torch.sign(b) * a * a * s).reshape(-1)[:n]
    a = torch.round((b * inv) ** 0.25 * 255) / 255
    return (a**4 * s).reshape(-1)[:n]


def _dynamic_map(signed: bool) -> torch.Tensor:
    """Dettmers et al.'s dynamic tree map (7 exponent levels, linear fractions), as bitsandbytes builds it."""
    total_bits, max_exponent_bits = 8, 7
    non_sign_bits = total_bits - (1 if signed else 0)
    values = []
    for i in range(max_exponent_bits):
        n = int(
            2 ** (i + non_sign_bits - max_exponent_bits) + 1
            if signed
            else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        )
        bounds = torch.linspace(0.1, 1, n)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        values += (10 ** (-(max_exponent_bits - 1) + i) * means).tolist()
        if signed:
            values += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    values += [0.0, 1.0]
    if signed:
        values += [-1.0]
    return torch.tensor(sorted(set(values)))


_MAPS = {True: _dynamic_map(True), False: _dynamic_map(False)}


def dynamic(x, signed, block):
    b, n = _blocks(x, block)
    s = b.abs().amax(1, keepdim=True)
    inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))
    code = _MAPS[signed]
    y = (b * inv).reshape(-1, 1)
    idx = torch.bucketize(y.reshape(-1), code).clamp(1, len(code) - 1)
    lo, hi = code[idx - 1], code[idx]
    near = torch.where((y.reshape(-1) - lo).abs() <= (hi - y.reshape(-1)).abs(), lo, hi)
    return (near.view_as(b) * s).reshape(-1)[:n]


def linear_m_power_v(x, signed, block):
    return linear(x, True, block) if signed else power(x, False, block)


CODECS = {"linear": linear, "power (clr_fused)": power, "linear m, power v": linear_m_power_v,
          "dynamic tree (bitsandbytes/torchao)": dynamic}  # fmt: skip
BLOCKS = (32, 64, 128, 256, 2048)


def direction_error(m, v, mq, vq, eps=1e-8):
    u = m / (v.sqrt() + eps)
    uq = mq / (vq.clamp_min(0).sqrt() + eps)
    rel = float((uq - u).norm() / u.norm())
    # the failure mode: v decodes to 0 while m does not (the update divides m by eps)
    blown = float(((vq <= 0) & (mq != 0)).float().mean())
    return rel, blown


# ------------------------------------------------------------------ the LM
def train(codec=None, *, steps: int, seed: int, snapshots=(), corpus=None, val=None):
    """AdamW with fp32 states (codec None), or with every state replaced after each step by its
    quantize-then-decode through ``codec`` at block 128: int8 storage, simulated (the update
    itself uses the unquantized new states, as the kernels do)."""
    model = c.make_model(seed)
    sched = cf.get_schedule("cosine", 1e-3, num_warmup_steps=steps // 10, num_training_steps=steps)
    opt = cf.AdamW(
        model.parameters(), lr=sched, betas=(0.9, 0.95), weight_decay=0.1, max_grad_norm=1.0, backend="torch"
    )
    gen = torch.Generator().manual_seed(seed)
    snaps = {}
    for it in range(1, steps + 1):
        x, y = corpus.batch(gen)
        opt.zero_grad()
        c.lm_loss(model(x), y).backward()
        opt.step()
        if codec is not None:  # quantize the states in place with the candidate (simulated int8 storage)
            with torch.no_grad():
                for st in opt.state.values():
                    for key, signed in (("exp_avg", True), ("exp_avg_sq", False)):
                        t = st[key]
                        t.copy_(codec(t.reshape(-1), signed, 128).view_as(t))
        if it in snapshots:
            snaps[it] = [
                (st["exp_avg"].clone().reshape(-1), st["exp_avg_sq"].clone().reshape(-1)) for st in opt.state.values()
            ]
    return model, snaps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--no-training", action="store_true", help="the error table only (one fp32 run for the states)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    corpus = c.load_stdlib()
    gen = torch.Generator().manual_seed(123)
    val = [corpus.batch(gen, "val") for _ in range(8)]
    snap_at = tuple(s for s in (50, 200, args.steps) if s <= args.steps)
    _, snaps = train(None, steps=args.steps, seed=0, snapshots=snap_at, corpus=corpus)
    errors = []
    for name, codec in CODECS.items():
        for block in BLOCKS:
            for at, pairs in snaps.items():
                m = torch.cat([a for a, _ in pairs])
                v = torch.cat([b for _, b in pairs])
                mq = torch.cat([codec(a, True, block) for a, _ in pairs])
                vq = torch.cat([codec(b, False, block) for _, b in pairs])
                rel, blown = direction_error(m, v, mq, vq)
                errors.append(dict(codec=name, block=block, step=at, direction_rel_l2=rel, v_zero_beside_m=blown,
                                   bytes_per_element=1 + 4 / block))  # fmt: skip
    losses = []
    for name, codec in [] if args.no_training else [("fp32 states", None)] + [(n, f) for n, f in CODECS.items()]:
        finals = []
        for sd in range(args.seeds):
            model, _ = train(codec, steps=args.steps, seed=sd, corpus=corpus)
            finals.append(float(c.val_loss(model, val)))
        losses.append(dict(codec=name, block=128 if codec else None, final_val_loss=finals,
                           mean=statistics.fmean(finals)))  # fmt: skip
    date = datetime.date.today().isoformat()
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"int8-codec-{date}{'-errors' if args.no_training else ''}")
    with open(stem + ".json", "w") as f:
        json.dump(dict(date=date, steps=args.steps, errors=errors, training=losses), f, indent=1)
    lines = [f"# int8 state codec: map and block size, char-level GPT, AdamW, {date}", "",
             "Adam update direction m / (sqrt(v) + eps) from quantized states vs fp32 (relative L2 error; share of "
             "elements whose v decodes to 0 while their m does not), on the fp32 run's states at each step:", "",
             "| codec | block | bytes/element | step | direction rel. L2 | v = 0 beside m != 0 |", "|---|---|---|---|---|---|"]  # fmt: skip
    for e in errors:
        lines.append(
            f"| {e['codec']} | {e['block']} | {e['bytes_per_element']:.3f} | {e['step']} | {e['direction_rel_l2']:.4f} | {e['v_zero_beside_m']:.2e} |"
        )
    lines += ["", f"Training with the states quantized by the candidate after every step (block 128), {args.steps} steps, "
              f"{args.seeds} seeds, final validation loss:", "", "| codec | final validation loss (per seed) | mean |", "|---|---|---|"]  # fmt: skip
    for r in losses:
        lines.append(f"| {r['codec']} | {', '.join(f'{v:.4f}' for v in r['final_val_loss'])} | {r['mean']:.4f} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
