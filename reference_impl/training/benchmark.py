"""``python -m reference_impl bench train --config NAME --json``: our trainer against a bare loop.

Both train the same model (same initial weights) on the same batches at the last curriculum
stage's resolution. The bare loop is the textbook minimum - noise, timestep, forward, MSE,
backward, AdamW step - so the ratio shows what the trainer's extras (EMA, clipping, health
checks, per-timestep statistics, min-SNR) cost. The two are timed in alternating blocks so a
busy machine slows both alike; the figure per side is the median step time.
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time

import torch

from ..config import load_config
from ..data.curriculum import BatchStream, collate, stage_dataset
from ..models.unet import count_parameters
from .throughput import device_peak_flops, mfu, training_step_flops
from .trainer import Trainer


def _bare_loop(trainer: Trainer, stream: BatchStream):
    """A minimal diffusion step on a copy of the trainer's model, for comparison."""
    import copy

    model = copy.deepcopy(trainer.raw_unet).train()
    opt = torch.optim.AdamW(model.parameters(), lr=trainer.cfg.train.lr)
    sched, text = trainer.noise_scheduler, trainer.text
    gen = torch.Generator().manual_seed(0)
    device = trainer.device

    def step():
        batch = next(stream)
        x0 = batch["image"].to(device)
        hidden, mask = text.encode(batch["caption"])
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=gen).to(device)
        with trainer.accelerator.autocast():
            pred = model(sched.add_noise(x0, noise, t), t, hidden.to(device),
                         encoder_attention_mask=mask.to(device)).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return x0.shape[0]
    return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(args) -> dict:
    cfg = load_config(args.config, args.overrides)
    last = cfg.train.curriculum[-1]
    steps = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        # one stage at the final resolution, long enough for warm-up + timed steps
        stage = dataclasses.replace(last, steps=10 * (steps + 4))
        cfg = dataclasses.replace(cfg, output_dir=tmp,
                                  train=dataclasses.replace(cfg.train, curriculum=[stage]))
        trainer = Trainer(cfg, progress=False)
        bs = stage.batch_size or cfg.train.batch_size
        make = lambda: BatchStream(stage_dataset(cfg.data, stage), cfg.data, bs, seed=0)
        ours_stream, bare_stream = make(), make()
        bare = _bare_loop(trainer, bare_stream)
        batch = collate(ours_stream.dataset.__getitems__([0, 1]))
        flops_per_image = training_step_flops(lambda: trainer.micro_batch_loss(batch)[0].backward()) / 2
        trainer.optimizer.zero_grad(set_to_none=True)
        ours_t, bare_t = [], []
        if trainer.device.type == "cuda":  # peak over the timed rounds, both loops resident
            torch.cuda.reset_peak_memory_stats(trainer.device)
        for i in range(2 + steps):  # the first two rounds warm up allocators and caches
            _sync(trainer.device)
            t0 = time.perf_counter()
            trainer.train_step(ours_stream)
            _sync(trainer.device)
            t1 = time.perf_counter()
            bare()
            _sync(trainer.device)
            t2 = time.perf_counter()
            if i >= 2:
                ours_t.append(t1 - t0)
                bare_t.append(t2 - t1)
        images = bs * cfg.train.grad_accum
        ours_s, bare_s = statistics.median(ours_t), statistics.median(bare_t) * cfg.train.grad_accum
        device = trainer.device
        peak = device_peak_flops(device, torch.bfloat16 if cfg.train.mixed_precision == "bf16"
                                 else torch.float32)
        memory = {}
        if device.type == "cuda":
            memory["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
        return {"benchmark": "train", "config": cfg.name, "device": str(device),
                "model_parameters": count_parameters(trainer.raw_unet),
                "resolution": stage.resolution, "batch_size": bs, "grad_accum": cfg.train.grad_accum,
                "timed_steps": steps, "threads": torch.get_num_threads(),
                "ours_images_per_s": round(images / ours_s, 2),
                "bare_images_per_s": round(images / bare_s, 2),
                "ratio": round(bare_s / ours_s, 3),
                "flops_per_image": flops_per_image,
                "mfu": mfu(flops_per_image * images, ours_s, peak),
                "peak_flops": peak, "mixed_precision": cfg.train.mixed_precision,
                "compile": cfg.perf.compile, **memory}
