"""End to end with the trainers people use: PyTorch Lightning (LearningRateMonitor,
checkpoint + resume mid-cycle, bf16-mixed) and Hugging Face's Trainer (tiny
models built from configs: nothing is downloaded).  Skipped where a package
is missing; CI installs both (the dev extras)."""

from __future__ import annotations

import pytest
import torch

import clr_fused as cf

SPEC = dict(base_lr=0.01, max_lr=0.1, step_size_up=4)  # cycles momentum 0.9 -> 0.8 -> 0.9


def _spec():
    return cf.CyclicLR(**SPEC)


def _data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    return torch.utils.data.TensorDataset(x, x @ torch.randn(6, 2, generator=gen))


# ---------------------------------------------------------------- Lightning
def _lightning():
    pl = pytest.importorskip("pytorch_lightning")

    class Regressor(pl.LightningModule):
        def __init__(self, as_scheduler: bool):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
            self.as_scheduler = as_scheduler

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x).float(), y)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(_data(), batch_size=16, shuffle=False)  # 4 steps per epoch

        def configure_optimizers(self):
            opt = cf.SGD(self.parameters(), lr=_spec(), momentum=0.9, backend="torch")
            if not self.as_scheduler:
                return opt
            return {"optimizer": opt, "lr_scheduler": {"scheduler": opt.as_lr_scheduler(), "interval": "step"}}

    return pl, Regressor


def _fit(pl, module, max_steps, tmp_path, *, precision="32-true", ckpt_path=None):
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import CSVLogger

    monitor = LearningRateMonitor(logging_interval="step", log_momentum=True)
    trainer = pl.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, precision=precision, logger=CSVLogger(tmp_path),
        callbacks=[monitor], log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, monitor


def _logged(trainer):
    """(LRs, momenta) as the logger wrote them, by step.  (The monitor's own
    ``lrs`` lists keep the group's tensor object itself, so they alias.)"""
    import csv
    import os

    trainer.logger.save()
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    lr_key = next(k for k in rows[0] if k.startswith("lr-") and not k.endswith("-momentum"))
    rows = [r for r in rows if r.get(lr_key)]
    return [float(r[lr_key]) for r in rows], [float(r[lr_key + "-momentum"]) for r in rows]


@pytest.mark.parametrize("as_scheduler", [False, True], ids=["optimizer-alone", "with-as_lr_scheduler"])
def test_lightning_monitor_logs_true_lr_and_cycled_momentum(as_scheduler, tmp_path):
    pl, Regressor = _lightning()
    module = Regressor(as_scheduler)
    trainer, _ = _fit(pl, module, 10, tmp_path)
    spec = _spec()
    # the monitor logs before each optimizer step: the LR / momentum that update uses
    lrs, moms = _logged(trainer)
    assert lrs == pytest.approx([spec(k) for k in range(10)], rel=1e-5)
    assert moms == pytest.approx([spec.momentum(k) for k in range(10)], rel=1e-5)
    assert int(trainer.optimizers[0].schedule_step) == 10


def test_lightning_resume_mid_cycle_matches_an_uninterrupted_run(tmp_path):
    pl, Regressor = _lightning()
    # stops mid-cycle: at the LR peak, step 4 of a period of 8
    trainer, _ = _fit(pl, Regressor(as_scheduler=True), 4, tmp_path / "first")
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    spec = _spec()
    resumed = Regressor(as_scheduler=True)
    trainer2, _ = _fit(pl, resumed, 10, tmp_path / "resumed", ckpt_path=str(ckpt))
    lrs, moms = _logged(trainer2)
    assert lrs == pytest.approx([spec(k) for k in range(4, 10)], rel=1e-5)
    assert moms == pytest.approx([spec.momentum(k) for k in range(4, 10)], rel=1e-5)
    assert int(trainer2.optimizers[0].schedule_step) == 10
    # The first update after the resume is the uninterrupted run's fifth, bit for bit (both see
    # batch 0 there; later, Lightning's loop replays the epoch's batches in another order).
    one_more, straight = Regressor(as_scheduler=True), Regressor(as_scheduler=True)
    _fit(pl, one_more, 5, tmp_path / "one-more", ckpt_path=str(ckpt))
    _fit(pl, straight, 5, tmp_path / "straight")
    for a, b in zip(straight.parameters(), one_more.parameters()):
        assert torch.equal(a, b)


def test_lightning_bf16_mixed(tmp_path):
    pl, Regressor = _lightning()
    module = Regressor(as_scheduler=False)
    before = [p.detach().clone() for p in module.parameters()]
    trainer, _ = _fit(pl, module, 8, tmp_path, precision="bf16-mixed")
    spec = _spec()
    lrs, moms = _logged(trainer)
    assert lrs == pytest.approx([spec(k) for k in range(8)], rel=1e-5)
    assert moms == pytest.approx([spec.momentum(k) for k in range(8)], rel=1e-5)
    assert all(p.dtype == torch.float32 for p in module.parameters())  # autocast: the params stay fp32
    assert all(not torch.equal(a, b) and torch.isfinite(b).all() for a, b in zip(before, module.parameters()))


# ---------------------------------------------------------------- Hugging Face
def _hf_setup(tmp_path, max_steps=8):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (32, 8), generator=gen)
    data = [{"input_ids": ids[i], "labels": int(ids[i, 0] % 2)} for i in range(32)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=4, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    return transformers, model, data, args


def _hf_logged_lrs(trainer):
    return [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]


def test_hf_trainer_with_our_schedule(tmp_path):
    transformers, model, data, args = _hf_setup(tmp_path)
    opt = cf.AdamW(model.parameters(), lr=cf.CyclicLR(1e-4, 1e-3, 3, cycle_momentum=False), backend="torch")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, opt.as_lr_scheduler()))
    trainer.train()
    spec = cf.CyclicLR(1e-4, 1e-3, 3, cycle_momentum=False)
    # HF logs the LR each step applied (read between optimizer.step() and scheduler.step()), as with torch's
    assert _hf_logged_lrs(trainer) == pytest.approx([spec(k) for k in range(0, 8)], rel=1e-5)
    assert int(opt.schedule_step) == 8


def test_hf_trainer_with_its_own_scheduler_drives_the_lr(tmp_path):
    """(opt, None): HF adds its linear decay, which sets group["lr"] in place, as
    it does on torch's AdamW; the run then matches torch's AdamW under the same
    Trainer: logged LRs and the trained weights."""
    runs = []
    for ours in (True, False):
        transformers, model, data, args = _hf_setup(tmp_path / str(ours))
        if ours:
            opt = cf.AdamW(model.parameters(), lr=cf.CyclicLR(1e-4, 1e-3, 3, cycle_momentum=False), backend="torch")
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)  # our schedule's LR when HF built its scheduler
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None))
        trainer.train()
        runs.append((_hf_logged_lrs(trainer), [p.detach().clone() for p in model.parameters()], opt))
    (lrs, weights, opt), (torch_lrs, torch_weights, _) = runs
    assert len(lrs) == 8 and lrs == pytest.approx(torch_lrs, rel=1e-6)
    assert lrs[0] > lrs[-1] > 0  # HF's linear decay, not our cycle
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(1e-4 * (1 - 8 / 8), abs=1e-12)
    for a, b in zip(weights, torch_weights):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("linear", {}),
        ("cosine", {}),
        ("cosine_with_min_lr", {"min_lr": 1e-5}),
        ("warmup_stable_decay", {"num_decay_steps": 4}),
    ],
)
def test_hf_trainer_get_schedule_on_the_device_matches_its_lr_scheduler_type(name, kw, tmp_path):
    """Trainer(lr_scheduler_type=name) on torch's AdamW, and Trainer with our
    AdamW driven by cf.get_schedule(name) on the device: the same logged LRs
    (float32 of HF's) and weights."""
    runs = []
    for ours in (True, False):
        transformers, model, data, args = _hf_setup(tmp_path / str(ours), max_steps=10)
        args.warmup_steps, args.lr_scheduler_type, args.lr_scheduler_kwargs = 3, name, dict(kw)
        if ours:
            opt = cf.AdamW(
                model.parameters(), lr=cf.get_schedule(name, 1e-3, 3, 10, kw), backend="cpu" if _cpu() else "torch"
            )
            trainer = transformers.Trainer(
                model=model, args=args, train_dataset=data, optimizers=(opt, opt.as_lr_scheduler())
            )
        else:
            trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                           optimizers=(torch.optim.AdamW(model.parameters(), lr=1e-3), None))  # fmt: skip
        trainer.train()
        runs.append((_hf_logged_lrs(trainer), [p.detach().clone() for p in model.parameters()]))
    (lrs, weights), (torch_lrs, torch_weights) = runs
    assert len(lrs) == 10
    assert [torch.tensor(v, dtype=torch.float32).item() for v in lrs] == [
        torch.tensor(v, dtype=torch.float32).item() for v in torch_lrs
    ]
    for a, b in zip(weights, torch_weights):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _cpu() -> bool:
    from clr_fused import _ext

    return _ext.load() is not None
