"""The trainer: one loop for pre-training, SFT, LoRA and DPO (they differ by data, LR, which
parameters train and - DPO only - the loss). Devices, mixed precision and data parallelism come
from accelerate.

What is learned is the *loss* the trainer is given (``loss=``): ``DiffusionLoss`` (pre-training,
SFT, LoRA; diffusion/objectives.py) by default, ``DiffusionDPOLoss`` (alignment/dpo.py) for
DPO. Both noise their batch through the one ``ForwardProcess``; the trainer logs their stats.

One optimizer step (``train_step``):
  1. for each of ``grad_accum`` micro-batches: the loss (noise, timesteps, caption dropout,
     target, weights); backward of loss / grad_accum - without the DDP gradient sync except
     on the last micro-batch;
  2. clip the gradient norm (the pre-clip norm is logged);
  3. health check: a non-finite loss or gradient skips the update; too many in a row abort;
  4. optimizer and LR schedule step, then the EMA folds in the new weights.

Data parallelism (docs/scaling.md): ``parallel.strategy=ddp`` lets accelerate wrap the model in
DDP; ``fsdp`` shards it with torch's FSDP2 (distributed/fsdp.py): the EMA is then sharded too,
checkpoints are distributed (distributed/checkpoint.py), and sampling or export first gathers
a whole copy.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from ..config import Config, to_dict
from ..data.curriculum import BatchStream, stage_dataset
from ..diffusion.objectives import DiffusionLoss, ForwardProcess
from ..diffusion.sampling import sample_with_config
from ..diffusion.schedule import make_scheduler
from ..distributed import checkpoint as dcp_ckpt
from ..distributed import cores
from ..distributed import fsdp as fsdp_lib
from ..models.exported import export_final
from ..models.text_encoder import TextEncoder
from ..models.unet import build_unet, count_parameters
from . import checkpoint as ckpt
from . import perf
from .ema import EMA, ShardedEMA
from .health import HealthMonitor
from .lr_schedule import make_lr_schedule
from .throughput import ThroughputMeter, device_peak_flops, training_step_flops

NUM_T_BINS = 10  # per-timestep-bin loss: which noise levels are learned, and when


class Trainer:
    """Builds everything from a ``Config`` and trains it through its curriculum."""

    def __init__(self, cfg: Config, resume: bool = False, progress: bool = True,
                 unet: torch.nn.Module | None = None, validator=None, dataset_fn=None,
                 loss=None, export=None):
        self.cfg, self.progress = cfg, progress
        # export(run_dir, raw, ema, cfg_dict, scheduler, resolution) writes what the run ships:
        # a whole model in diffusers format by default, only the adapter for a LoRA run
        self.export = export or export_final
        # dataset_fn(data_cfg, stage) -> Dataset replaces curriculum.stage_dataset: how SFT,
        # DPO and the pipeline train on a filtered, re-captioned or curated subset
        self.dataset_fn = dataset_fn or stage_dataset
        t = cfg.train
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        # step_scheduler_with_optimizer=False: our LR schedule counts optimizer steps
        # (total_steps); accelerate would otherwise step it num_processes times per step,
        # as if each rank's batch were a step of its own, and finish the cosine too early
        # Launched by torchrun on a machine without a GPU, accelerate only joins the process
        # group when told to use the CPU; otherwise every worker trains alone on all the data.
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        self.accelerator = Accelerator(mixed_precision=t.mixed_precision,
                                       step_scheduler_with_optimizer=False,
                                       cpu=launched > 1 and not torch.cuda.is_available())
        if self.accelerator.num_processes != launched:
            raise RuntimeError(f"launched as {launched} processes (WORLD_SIZE) but accelerate "
                               f"sees {self.accelerator.num_processes}: the workers would not "
                               "share gradients; see docs/scaling.md for the launch commands")
        self.device = self.accelerator.device
        # FSDP: asked for by the config, or by an accelerate launch with configs/accelerate/fsdp.yaml
        # (whose sharding settings then apply). Either way we shard with fully_shard ourselves.
        fsdp_launch = self.accelerator.distributed_type == DistributedType.FSDP
        self.fsdp = cfg.parallel.strategy == "fsdp" or fsdp_launch
        perf.set_backend_flags(cfg.perf, self.device)
        self.run_dir = Path(cfg.output_dir)
        self.is_main = self.accelerator.is_main_process
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run

        self.text = TextEncoder(cfg.text.encoder, cfg.text.max_length, device=self.device)
        first_res = t.curriculum[0].resolution
        model = unet if unet is not None else build_unet(
            cfg.model.preset, first_res, self.text.dim,
            **{k: v for k, v in (("block_out_channels", cfg.model.block_out_channels),
                                 ("layers_per_block", cfg.model.layers_per_block)) if v is not None})
        model = perf.prepare_model(model, cfg.perf, self.device, compile=not self.fsdp)
        if self.fsdp:
            reshard, min_params = fsdp_lib.settings_from_accelerate(
                self.accelerator.state.fsdp_plugin) if fsdp_launch else (
                cfg.parallel.fsdp_sharding == "full_shard", cfg.parallel.fsdp_min_params)
            # the model's skeleton (meta device, no memory) to gather whole copies into later
            self.template = copy.deepcopy(model).to("meta")
            model = fsdp_lib.shard_model(model, self.device, reshard, min_params, t.mixed_precision)
            model = perf.compile_model(model, cfg.perf, self.device)
        self.noise_scheduler = make_scheduler(cfg.diffusion.beta_schedule,
                                              cfg.diffusion.num_train_timesteps,
                                              cfg.diffusion.prediction_type,
                                              cfg.diffusion.zero_terminal_snr,
                                              cfg.diffusion.timestep_spacing)
        self.total_steps = sum(s.steps for s in t.curriculum)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = perf.make_optimizer(params, t.lr, t.weight_decay, cfg.perf, self.device)
        lr_sched = make_lr_schedule(optimizer, t.lr_schedule, t.warmup_steps, self.total_steps,
                                    t.decay_fraction)
        ema_schedule = {"decay": t.ema_decay, "use_warmup": t.ema_warmup, "power": t.ema_power}
        if self.fsdp:
            # already sharded: accelerate must not wrap it in DDP as well. Its optimizer wrapper
            # would add only fp16 loss scaling, which the config refuses with FSDP.
            self.unet, self.optimizer, self.lr_scheduler = model, optimizer, lr_sched
            self.ema = ShardedEMA(self.unet, **ema_schedule)
        else:
            self.unet, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
                model, optimizer, lr_sched)
            self.ema = EMA(self.raw_unet, **ema_schedule)
        self.health = HealthMonitor(spike_z=t.spike_z, max_bad_steps=t.max_bad_steps)
        # noise, timesteps and caption dropout: one generator, the same on every rank (see
        # micro_batch_loss), so a checkpoint's generator state is every rank's state
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + 17)
        d = cfg.diffusion
        self.forward_process = ForwardProcess(
            self.noise_scheduler, d, self.text, self.gen, self.accelerator.process_index,
            self.accelerator.num_processes, self.device,
            layout=lambda x: perf.to_layout(x, cfg.perf, self.device),
            autocast=self.accelerator.autocast)
        # loss(unet, batch, forward_process) -> (loss, stats); a loss holding models of its own
        # (DPO's frozen reference) moves them to this device
        self.loss = loss if loss is not None else DiffusionLoss(d.prediction_type, d.min_snr_gamma)
        if hasattr(self.loss, "to"):
            self.loss.to(self.device)
        self.step, self.stage_index, self.stage_batches = 0, 0, 0
        self.validator = validator
        self.history: list[dict] = []

        if resume:
            self._resume()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        self.n_params = count_parameters(self.raw_unet, trainable_only=True)

    # ------------------------------------------------------------------ plumbing
    @property
    def raw_unet(self):
        return self.accelerator.unwrap_model(self.unet)

    def _stage_at(self, step: int) -> int:
        acc = 0
        for i, s in enumerate(self.cfg.train.curriculum):
            acc += s.steps
            if step < acc:
                return i
        return len(self.cfg.train.curriculum) - 1

    def replicated_state(self) -> dict:
        """What every rank holds identically: schedules, counters, generators."""
        return {"lr_scheduler": self.lr_scheduler.state_dict(),
                "health": self.health.state_dict(),
                "trainer": {"step": self.step, "stage_index": self.stage_index,
                            "stage_batches": self.stage_batches,
                            "generator": self.gen.get_state()},
                "rng": ckpt.rng_state()}

    def state(self) -> dict:
        """Everything a (replicated-model) checkpoint holds."""
        return {"unet": self.raw_unet.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), **self.replicated_state()}

    def save(self) -> Path | None:
        """Checkpoint the run (every rank calls this); returns the folder (None on other ranks).

        DDP / one process: rank 0 holds everything and writes it. FSDP: every rank writes its
        shard of the weights, EMA and optimizer (a distributed checkpoint); rank 0 adds the rest.
        """
        self.accelerator.wait_for_everyone()
        path, keep = None, self.cfg.train.keep_checkpoints
        if self.fsdp:
            path = dcp_ckpt.save_distributed(
                ckpt.checkpoint_path(self.run_dir, self.step), self.unet, self.optimizer,
                extra=self.replicated_state(), sharded={"ema": self.ema.state_dict()})
            if self.is_main:
                ckpt.prune_checkpoints(self.run_dir, keep)
        elif self.is_main:
            path = ckpt.save_checkpoint(self.run_dir, self.step, self.state(), keep=keep)
        self.accelerator.wait_for_everyone()
        return path if self.is_main else None

    def _resume(self) -> None:
        if self.is_main:
            for p in ckpt.remove_partial(self.run_dir):
                print(f"removed a partial checkpoint left by a crash: {p}")
        self.accelerator.wait_for_everyone()  # nobody lists checkpoints while rank 0 cleans up
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            print(f"--resume: no checkpoint in {self.run_dir}/checkpoints; starting fresh")
            return
        if dcp_ckpt.is_distributed_checkpoint(path) != self.fsdp:
            written, now = ("a DDP/one-process", "fsdp") if self.fsdp else ("an FSDP", "ddp")
            raise RuntimeError(f"{path} was written by {written} run, this run uses "
                               f"parallel.strategy={now}: resume with the strategy that wrote it")
        if self.fsdp:
            # loads into this run's shards, whatever world size wrote the checkpoint
            ema = self.ema.state_dict()  # DCP fills these shards (and the step count) in place
            s = dcp_ckpt.load_distributed(path, self.unet, self.optimizer, sharded={"ema": ema})
            self.ema.load_state_dict(ema)
        else:
            s = ckpt.load_checkpoint(path)
            self.raw_unet.load_state_dict(s["unet"])
            self.ema.load_state_dict(s["ema"])
            self.optimizer.load_state_dict(s["optimizer"])
        self.lr_scheduler.load_state_dict(s["lr_scheduler"])
        self.health.load_state_dict(s["health"])
        tr = s["trainer"]
        self.step, self.stage_index, self.stage_batches = tr["step"], tr["stage_index"], tr["stage_batches"]
        self.gen.set_state(tr["generator"])
        ckpt.set_rng_state(s["rng"])
        print(f"resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------ the step
    def micro_batch_loss(self, batch: dict, inject_nan: bool = False) -> tuple[torch.Tensor, dict]:
        """The loss of one micro-batch (scalar) and its stats (see ``train_step``)."""
        loss, stats = self.loss(self.unet, batch, self.forward_process)
        if inject_nan:
            loss = loss * float("nan")
        return loss, stats

    def train_step(self, stream: BatchStream) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns its log record.

        The loss's stats: ``t`` and ``mse`` (B,) feed the per-timestep-bin loss ``loss_t/i``;
        every float (DPO's ``dpo/implicit_acc``, ...) is logged under its name, averaged over
        the micro-batches and the ranks like the loss itself.
        """
        tc = self.cfg.train
        t0 = time.perf_counter()
        data_wait, total, images = 0.0, 0.0, 0
        bins = torch.zeros(NUM_T_BINS)
        counts = torch.zeros(NUM_T_BINS)
        inject = self.step in tc.inject_nan_at
        logged: dict[str, float] = {}  # the loss's scalar stats, summed over micro-batches
        for micro in range(tc.grad_accum):
            td = time.perf_counter()
            batch = next(stream)
            data_wait += time.perf_counter() - td
            last = micro == tc.grad_accum - 1
            if last:
                sync = nullcontext()
            elif self.fsdp:
                sync = fsdp_lib.no_grad_sync(self.unet)
            else:
                sync = self.accelerator.no_sync(self.unet)
            with sync:
                loss, diag = self.micro_batch_loss(batch, inject_nan=inject)
                # dividing by grad_accum makes the summed gradients the mean over all
                # micro-batches: the same update as one big batch
                self.accelerator.backward(loss / tc.grad_accum)
            total += loss.item() / tc.grad_accum
            images += len(batch["caption"])
            b = (diag["t"] * NUM_T_BINS // self.cfg.diffusion.num_train_timesteps).clamp(max=NUM_T_BINS - 1)
            bins.index_add_(0, b, diag["mse"])
            counts.index_add_(0, b, torch.ones_like(diag["mse"]))
            for k, v in diag.items():
                if isinstance(v, float):
                    logged[k] = logged.get(k, 0.0) + v / tc.grad_accum
        max_norm = tc.max_grad_norm if tc.max_grad_norm > 0 else float("inf")
        norm = self.accelerator.clip_grad_norm_(self.unet.parameters(), max_norm)
        # under FSDP the norm is a DTensor (each rank summed its shard's squares): make it whole
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if self.accelerator.num_processes > 1:  # the global batch's numbers, the same on all ranks
            both = torch.tensor([total, *logged.values()], device=self.device)  # float32, as before
            total, *rest = self.accelerator.reduce(both, "mean").tolist()
            logged = dict(zip(logged, rest))
        report = self.health.check(total, grad_norm)
        decay = None
        if report["ok"]:
            self.optimizer.step()
            decay = self.ema.update(self.raw_unet)
        self.lr_scheduler.step()  # the schedule follows the step count even on skipped steps
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.stage_batches = stream.consumed
        rec = {"step": self.step, "loss": total, "grad_norm": grad_norm,
               "lr": self.lr_scheduler.get_last_lr()[0], "ema_decay": decay,
               "skipped": not report["ok"], "spike": report["spike"],
               "loss_ema": report["loss_ema"], "loss_std": report["loss_std"],
               "_seconds": time.perf_counter() - t0, "_data_seconds": data_wait, "_images": images,
               **logged}
        for i in range(NUM_T_BINS):
            if counts[i] > 0:
                rec[f"loss_t/{i}"] = float(bins[i] / counts[i])
        if not report["ok"]:
            print(f"step {self.step}: non-finite loss/gradient (loss={total}, grad_norm={grad_norm}); "
                  "update skipped")
        return rec

    # ------------------------------------------------------------------ the loop
    def whole_models(self, raw: bool = True) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """(EMA model, raw model or None) as ordinary modules, for sampling and export.

        Under FSDP no rank holds either: this gathers whole copies - a collective, so every
        rank must call it. Otherwise it returns the models themselves.
        """
        if not self.fsdp:
            return self.ema.shadow, (self.raw_unet if raw else None)
        ema = self.ema.full(self.template, self.device)
        whole = fsdp_lib.gather_full(self.template, self.unet.state_dict(), self.device) if raw else None
        return ema, whole

    def sample_fn(self, resolution: int, model: torch.nn.Module | None = None):
        """(prompts, seed) -> images from ``model`` (default: the EMA weights)."""
        model = self.whole_models(raw=False)[0] if model is None else model

        def fn(prompts: list[str], seed: int) -> torch.Tensor:
            return sample_with_config(model, self.text, self.noise_scheduler, self.cfg.diffusion,
                                      prompts, resolution, seed=seed)
        return fn

    def validate(self, resolution: int, ema_model: torch.nn.Module | None = None) -> dict:
        """Validation metrics of the EMA weights (every rank calls this; rank 0 measures)."""
        if self.validator is None:
            return {}
        if ema_model is None:
            ema_model = self.whole_models(raw=False)[0]  # under FSDP: a gather, all ranks
        if not self.is_main:
            return {}
        with cores.threads(self.cfg.parallel.sampling_threads):  # the waiting ranks' cores
            out = self.validator.run(self.sample_fn(resolution, ema_model), step=self.step,
                                     out_dir=self.run_dir / "samples")
        return {f"val/{k}": v for k, v in out.items() if isinstance(v, (int, float))}

    def _flops_per_image(self, stream: BatchStream) -> float | None:
        """FLOPs of one training image (forward + backward), counted on a 2-image batch."""
        batch = stream.dataset.__getitems__([0, 1])
        from ..data.curriculum import collate

        state = self.gen.get_state()  # counting must not consume the training randomness
        try:
            flops = training_step_flops(lambda: self.micro_batch_loss(collate(batch))[0].backward())
        finally:
            self.gen.set_state(state)
            self.optimizer.zero_grad(set_to_none=True)
        return flops / 2

    def fit(self, stop_after: int | None = None,
            on_step: Callable[[Trainer, dict], None] | None = None) -> list[dict]:
        """Train through the curriculum (or ``stop_after`` more steps); returns the log.

        ``on_step(trainer, rec)``, if given, is called once after every optimizer step - a
        skipped (non-finite) one too - when the step is done: its EMA update, log record,
        validation and checkpoint. It is how a caller records something per step (an
        experiment's weight snapshots, its own copy of every step's record) without a loop of
        its own. ``rec`` is the step's log record, a flat dict of Python scalars:
          step                steps done, now ``trainer.step`` (1, 2, ... in order, each once)
          loss, grad_norm     the step's mean loss over micro-batches and ranks; the gradient
                              norm before clipping
          lr                  the LR after the schedule's step (the LR of the next step)
          ema_decay           the decay the EMA folded in with (None: update skipped)
          skipped, spike      the health monitor's verdict; loss_ema, loss_std its statistics
          loss_t/i            mean MSE of the step's samples in timestep bin i (of NUM_T_BINS)
          stage, resolution   the curriculum stage (index) and its resolution
        plus the loss's own float stats (DPO's ``dpo/...``) and, on a logged step, the
        throughput summary and ``val/...`` metrics. ``trainer.raw_unet`` and ``trainer.ema``
        hold the weights after the step. The hook runs on every rank (a collective, such as
        ``whole_models`` under FSDP, needs all of them); one that only records should check
        ``trainer.is_main``. It must only read: the weights, the optimizer, the generators
        and ``rec`` stay as they were, so a run with a hook trains bit for bit as one without.
        """
        tc = self.cfg.train
        log_path = self.run_dir / "metrics.jsonl"
        writer = None
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        end = self.total_steps if stop_after is None else min(self.total_steps, self.step + stop_after)
        bar = tqdm(total=end, initial=self.step, disable=not (self.progress and self.is_main),
                   desc=self.cfg.name, dynamic_ncols=True)
        world = self.accelerator.num_processes
        # subnormal floats as zero while training: a saturated loss makes them (perf.py)
        with perf.flush_denormals(self.device):
            while self.step < end:
                self.stage_index = self._stage_at(self.step)
                stage = tc.curriculum[self.stage_index]
                stage_end = sum(s.steps for s in tc.curriculum[: self.stage_index + 1])
                resume_batches = self.stage_batches if self.step > stage_end - stage.steps else 0
                stream = BatchStream(self.dataset_fn(self.cfg.data, stage), self.cfg.data,
                                     stage.batch_size or tc.batch_size, seed=self.cfg.seed + self.stage_index,
                                     start_batch=resume_batches,
                                     rank=self.accelerator.process_index, world_size=world)
                meter = ThroughputMeter(self._flops_per_image(stream),
                                        device_peak_flops(self.device), num_devices=world,
                                        window=tc.log_every)
                bar.set_postfix_str(f"stage {self.stage_index + 1}/{len(tc.curriculum)} @ {stage.resolution}px")
                while self.step < min(stage_end, end):
                    rec = self.train_step(stream)
                    meter.update(rec.pop("_images") * world, rec.pop("_seconds"), rec.pop("_data_seconds"))
                    rec.update(stage=self.stage_index, resolution=stage.resolution)
                    bar.update(1)
                    last_of_stage = self.step == stage_end
                    if self.step % tc.log_every == 0 or last_of_stage or rec["skipped"]:
                        rec.update({k: v for k, v in meter.summary().items() if v is not None})
                        bar.set_postfix(loss=f"{rec['loss_ema'] or float('nan'):.4f}",
                                        gnorm=f"{rec['grad_norm']:.2f}", img_s=f"{meter.images_per_s:.0f}")
                        if tc.validate_every and self.step % tc.validate_every == 0:
                            rec.update(self.validate(stage.resolution))
                        self._log(rec, log_path, writer)
                    # never checkpoint in the middle of a run of non-finite steps: the last
                    # checkpoint must be a good one
                    if (self.step % tc.checkpoint_every == 0 or last_of_stage) \
                            and self.health.bad_in_a_row == 0:
                        self.save()
                    if on_step is not None:
                        on_step(self, rec)
                self.stage_batches = 0 if self.step == stage_end else self.stage_batches
        bar.close()
        if self.step >= self.total_steps:
            self.finish(writer, log_path)
        if writer is not None:
            writer.close()
        if self.is_main:  # one writer for the shared embedding cache file
            self.text.save_cache()
        return self.history

    def _log(self, rec: dict, log_path: Path, writer) -> None:
        self.history.append(rec)
        if not self.is_main:
            return
        with open(log_path, "a") as f:
            f.write(json.dumps({k: v for k, v in rec.items() if v is None or not isinstance(v, float)
                                or math.isfinite(v)}) + "\n")
        for k, v in rec.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                writer.add_scalar(k, v, rec["step"])

    def finish(self, writer, log_path: Path) -> None:
        """Final validation (EMA and raw weights), export in diffusers format, a sample grid."""
        ema_model, raw_model = self.whole_models()  # under FSDP: gathered on every rank
        if not self.is_main:
            return
        res = self.cfg.train.curriculum[-1].resolution
        final = {"step": self.step, "final": True}
        if self.validator is not None:
            final.update(self.validate(res, ema_model))
            with cores.threads(self.cfg.parallel.sampling_threads):  # the others have exited
                raw = self.validator.run(self.sample_fn(res, raw_model), step=self.step, out_dir=None)
            final.update({f"val_raw/{k}": v for k, v in raw.items() if isinstance(v, (int, float))})
            self._log(final, log_path, writer)
        self.export(self.run_dir, raw_model, ema_model, to_dict(self.cfg), self.noise_scheduler,
                    resolution=res)
