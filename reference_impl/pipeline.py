"""The lifecycle, stage by stage: ``python -m reference_impl pipeline --config laptop``.

    web -> caption -> safety -> pretrain -> curate -> sft -> pairs -> dpo -> lora
        -> safety_check -> report

Each stage writes under ``<output_dir>/stages/NN_name/``: its outputs, ``metrics.json`` (its
measured numbers, with sample sizes) and, last, a ``DONE`` marker. A rerun skips every stage
with a marker (resumable; the pre-training stage also resumes from its own checkpoints);
``--from-stage NAME`` deletes that stage and the later ones and runs them again.
``pipeline.log`` records which stages ran and which were skipped.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from .config import ConfigError, load_config

STAGES = ("web", "caption", "safety", "pretrain", "curate", "sft", "pairs", "dpo", "lora",
          "safety_check", "report")


def add_arguments(p) -> None:
    p.add_argument("--config", default="laptop", help="preset name (ci, laptop, ...) or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable)")
    p.add_argument("--from-stage", choices=STAGES, default=None,
                   help="re-run this stage and every later one, even if finished")
    p.add_argument("--stop-after-stage", choices=STAGES, default=None,
                   help="stop once this stage is done (resume later by running again)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


class Pipeline:
    """Runs the stages of ``STAGES`` in order for one config; models are loaded lazily."""

    def __init__(self, cfg, progress: bool = True):
        if cfg.data.source != "shapes":
            raise ConfigError(f"data.source={cfg.data.source!r}: the pipeline runs on ShapesWorld")
        if cfg.data.balance != "none":
            raise ConfigError("data.balance must be 'none' in the pipeline: the filtered subset "
                              "has no per-scene class list for the balanced sampler")
        self.cfg, self.progress = cfg, progress
        self.root = Path(cfg.output_dir)
        self.res = cfg.train.curriculum[-1].resolution
        c = cfg.curation
        self.world = dataclasses.replace(cfg.data.world, caption_mix=list(c.web_caption_mix),
                                         unsafe_fraction=c.web_unsafe_fraction)
        self._cache: dict = {}

    # ------------------------------------------------------------------ plumbing
    def dir(self, name: str) -> Path:
        return self.root / "stages" / f"{STAGES.index(name):02d}_{name}"

    def metrics(self, name: str) -> dict:
        return json.loads((self.dir(name) / "metrics.json").read_text())

    def _log(self, text: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "pipeline.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")

    def _lazy(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def captioner(self):
        from .curation.captioner import AutoCaptioner
        return self._lazy("captioner", lambda: AutoCaptioner.load_or_train(progress=self.progress))

    @property
    def scorer(self):
        from .curation.aesthetic import AestheticScorer
        return self._lazy("scorer", lambda: AestheticScorer.load_or_train(self.captioner))

    @property
    def safety_filter(self):
        from .curation.safety import SafetyFilter
        return self._lazy("safety", lambda: SafetyFilter.load_or_train(self.captioner))

    @property
    def probe(self):
        from .evaluation.probe import get_probe
        return self._lazy("probe", lambda: get_probe(progress=self.progress))

    def judge(self):
        from .alignment.preferences import Judge
        return Judge(self.captioner, self.scorer, self.cfg.dpo.judge)

    def web(self, resolution: int, hq_fraction: float | None = None, captions: bool = True):
        """The web data set at a resolution, with the auto-captions once they exist."""
        from .data.shapes import ShapesWorld
        world = self.world if hq_fraction is None else dataclasses.replace(self.world, hq_fraction=hq_fraction)
        override = None
        path = self.dir("caption") / "captions.json"
        if captions and path.exists():
            override = {int(k): v for k, v in json.loads(path.read_text()).items()}
        return ShapesWorld(world, self.cfg.data.num_train, resolution, caption_override=override)

    def kept(self) -> list[int]:
        return json.loads((self.dir("safety") / "kept.json").read_text())

    @property
    def text(self):
        from .models.text_encoder import TextEncoder
        t = self.cfg.text
        return self._lazy("text", lambda: TextEncoder(t.encoder, t.max_length))

    def model(self, stage: str, ema: bool = True):
        """(unet, text encoder, scheduler) of a stage's exported final/ folder (kept loaded:
        several stages sample the same model)."""
        from diffusers import DDPMScheduler, UNet2DConditionModel

        def load():
            final = self.dir(stage) / "final"
            unet = UNet2DConditionModel.from_pretrained(final / ("unet_ema" if ema else "unet"))
            return unet.eval(), DDPMScheduler.from_pretrained(final / "scheduler")
        unet, sched = self._lazy(("model", stage, ema), load)
        return unet, self.text, sched

    def samples(self, stage: str, prompts: list[str], seed: int | None = None) -> torch.Tensor:
        from .training.finetune import sample_images
        unet, text, sched = self.model(stage)
        return sample_images(unet, text, sched, self.cfg, prompts,
                             self.cfg.eval.seed if seed is None else seed)

    # ------------------------------------------------------------------ running
    def run(self, from_stage: str | None = None, stop_after: str | None = None) -> list[str]:
        """Run the unfinished stages in order; returns the names of the stages that ran."""
        if from_stage is not None:
            for name in STAGES[STAGES.index(from_stage):]:
                if self.dir(name).exists():
                    shutil.rmtree(self.dir(name))
        ran = []
        last = STAGES.index(stop_after) if stop_after else len(STAGES) - 1
        bar = tqdm(STAGES[: last + 1], desc="pipeline", disable=not self.progress, dynamic_ncols=True)
        for name in bar:
            bar.set_postfix_str(name)
            out = self.dir(name)
            if (out / "DONE").exists():
                self._log(f"skip {name} (done)")
                continue
            out.mkdir(parents=True, exist_ok=True)
            self._log(f"run {name}")
            t0 = time.perf_counter()
            metrics = getattr(self, f"stage_{name}")(out)
            metrics["seconds"] = time.perf_counter() - t0
            (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
            (out / "DONE").write_text("done\n")  # last: a stage without it reruns from scratch
            ran.append(name)
        if "text" in self._cache:
            self.text.save_cache()
        return ran

    # ------------------------------------------------------------------ stages
    def stage_web(self, out: Path) -> dict:
        """The web: ShapesWorld with file-name / alt-text / rich captions and some unsafe images."""
        from .data.captions import parse_caption
        from .data.shapes import sample_scene
        from .evaluation.validation import save_grid
        scenes = [sample_scene(self.world, i) for i in range(self.cfg.data.num_train)]
        quality = {q: sum(s["caption_quality"] == q for s in scenes) for q in ("filename", "alt", "rich")}
        ds = self.web(32, captions=False)
        items = ds.__getitems__(list(range(16)))
        save_grid(torch.stack([it["image"] for it in items]), out / "examples.png", nrow=8)
        (out / "examples.txt").write_text("\n".join(it["caption"] for it in items) + "\n")
        return {"n": len(scenes), "caption_quality": quality,
                "useful_captions": _useful(s["caption"] for s in scenes) / len(scenes),
                "unsafe": sum(bool(s["unsafe"]) for s in scenes),
                "parse_check": bool(parse_caption(scenes[0]["captions"][2]))}

    def stage_caption(self, out: Path) -> dict:
        """Re-caption every web image with the auto-captioner (DALL-E 3's recipe)."""
        from .curation.captioner import recaption
        from .data.shapes import sample_scene
        ds = self.web(32, captions=False)
        truth = [sample_scene(self.world, i)["captions"][2] for i in range(len(ds))]
        before = [sample_scene(self.world, i)["caption"] for i in range(len(ds))]
        if self.cfg.curation.recaption:
            new = recaption(ds, self.captioner, world_seed=self.world.seed)
        else:
            new = dict(enumerate(before))
        (out / "captions.json").write_text(json.dumps({str(k): v for k, v in new.items()}))
        after = [new[i] for i in range(len(ds))]
        return {"n": len(ds), "useful_before": _useful(before) / len(ds),
                "useful_after": _useful(after) / len(ds),
                "exact_before": sum(a == t for a, t in zip(before, truth)) / len(ds),
                "exact_after": sum(a == t for a, t in zip(after, truth)) / len(ds)}

    def stage_safety(self, out: Path) -> dict:
        """Drop what the safety filter flags; measured against the world's ground truth."""
        from .curation.safety import filter_dataset, precision_recall
        from .data.shapes import sample_scene
        ds = self.web(32)
        if self.cfg.curation.safety_filter:
            kept, counts = filter_dataset(ds, self.safety_filter)
        else:
            kept, counts = list(range(len(ds))), {"total": len(ds), "dropped": 0, "kept": len(ds)}
        (out / "kept.json").write_text(json.dumps(kept))
        unsafe = torch.tensor([bool(sample_scene(self.world, i)["unsafe"]) for i in range(len(ds))])
        flagged = torch.ones(len(ds), dtype=torch.bool)
        flagged[kept] = False
        pr = precision_recall(flagged, unsafe)
        return {**counts, "precision": pr["precision"], "recall": pr["recall"],
                "n_unsafe": pr["n_unsafe"], "unsafe_left": int(unsafe[kept].sum())}

    def stage_pretrain(self, out: Path) -> dict:
        """The existing trainer and curriculum, on the filtered, re-captioned web data."""
        from .training.commands import build_validator
        from .training.trainer import Trainer
        kept = self.kept()
        cfg = dataclasses.replace(self.cfg, output_dir=str(out))

        def dataset_fn(data_cfg, stage):
            return Subset(self.web(stage.resolution, stage.hq_fraction), kept)
        trainer = Trainer(cfg, resume=True, progress=self.progress, dataset_fn=dataset_fn,
                          validator=build_validator(cfg))
        trainer.fit()
        final = [r for r in trainer.history if r.get("final")]
        keep = ("val/prompt_acc", "val/prompt_acc/kind", "val/fid", "val_raw/prompt_acc", "val_raw/fid")
        m = {k: final[-1].get(k) for k in keep} if final else {}
        m.update(steps=trainer.step, train_images=len(kept), val_n=self.cfg.eval.num_prompts)
        from .evaluation.report import plot_run
        m["figures"] = [str(p) for p in plot_run(out)]
        return m

    def stage_curate(self, out: Path) -> dict:
        """Aesthetic top share of the filtered set: the SFT data."""
        from .curation.aesthetic import score_dataset, select_top_k
        from .data.shapes import sample_scene
        kept = self.kept()
        scores = score_dataset(Subset(self.web(self.res), kept), self.scorer)
        k = max(1, round(self.cfg.curation.sft_fraction * len(kept)))
        chosen = [kept[i] for i in select_top_k(scores, k).tolist()]
        (out / "sft_positions.json").write_text(json.dumps(chosen))
        true = {i: sample_scene(self.world, i)["aesthetic"] for i in kept}
        return {"n_in": len(kept), "k": k, "true_aesthetic_all": sum(true.values()) / len(kept),
                "true_aesthetic_selected": sum(true[i] for i in chosen) / k,
                "predicted_all": float(scores.mean()),
                "predicted_selected": float(scores[select_top_k(scores, k)].mean())}

    def stage_sft(self, out: Path) -> dict:
        """SFT from the pre-trained weights on the curated set; measured before and after."""
        from .evaluation.validation import save_grid, validation_prompts
        from .training.finetune import measure, sft
        prompts = validation_prompts(self.cfg.sft.num_eval_prompts)
        before_img = self.samples("pretrain", prompts)
        positions = json.loads((self.dir("curate") / "sft_positions.json").read_text())
        sft(self.cfg, self.dir("pretrain") / "final", lambda r: self.web(r), positions, out,
            progress=self.progress)
        after_img = self.samples("sft", prompts)
        save_grid(before_img, out / "before.png")
        save_grid(after_img, out / "after.png")
        return {"init": self.cfg.sft.init, "train_images": len(positions), "steps": self.cfg.sft.steps,
                "before": measure(before_img, prompts, self.probe, self.scorer),
                "after": measure(after_img, prompts, self.probe, self.scorer)}

    def stage_pairs(self, out: Path) -> dict:
        """Two SFT samples per prompt, chosen / rejected by the stated judge."""
        from .alignment.preferences import make_pairs, random_prompts
        prompts = random_prompts(self.cfg.dpo.num_pairs, seed=self.cfg.seed + 100)
        unet, text, sched = self.model("sft")
        from .training.finetune import sample_images
        pairs = make_pairs(lambda p, s: sample_images(unet, text, sched, self.cfg, p, s), prompts,
                           self.judge(), seed=self.cfg.seed)
        pairs.save_to_disk(str(out / "pairs"))
        n = len(pairs)
        return {"n": n, "judge": self.cfg.dpo.judge, "ties": int(sum(pairs["tie"])),
                "decided_by_match": int(sum(a != b for a, b in zip(pairs["chosen_match"], pairs["rejected_match"]))),
                "chosen_match": sum(pairs["chosen_match"]) / n, "rejected_match": sum(pairs["rejected_match"]) / n,
                "chosen_aesthetic": sum(pairs["chosen_aesthetic"]) / n,
                "rejected_aesthetic": sum(pairs["rejected_aesthetic"]) / n}

    def stage_dpo(self, out: Path) -> dict:
        """Diffusion-DPO from the SFT model; the judge's win rate on held-out prompts."""
        from .alignment.dpo import train_dpo
        from .alignment.preferences import load_pairs, random_prompts, win_rate
        from .training.finetune import measure
        pairs = load_pairs(self.dir("pairs") / "pairs")
        trainer = train_dpo(self.cfg, self.dir("sft") / "final", pairs, out, progress=self.progress)
        logged = [r for r in trainer.history if "dpo/implicit_acc" in r]
        prompts = random_prompts(self.cfg.dpo.num_eval_prompts, seed=self.cfg.seed + 200,
                                 exclude=pairs["prompt"])
        seed = self.cfg.eval.seed + 1
        dpo_img, sft_img = self.samples("dpo", prompts, seed), self.samples("sft", prompts, seed)
        return {"beta": self.cfg.dpo.beta, "steps": trainer.step, "pairs": len(pairs),
                "implicit_acc_last": logged[-1]["dpo/implicit_acc"] if logged else None,
                "reward_margin_last": logged[-1]["dpo/reward_margin"] if logged else None,
                "win_rate_vs_sft": win_rate(self.judge(), dpo_img, sft_img, prompts),
                "dpo": measure(dpo_img, prompts, self.probe, self.scorer),
                "sft": measure(sft_img, prompts, self.probe, self.scorer)}

    def stage_lora(self, out: Path) -> dict:
        """A brand-look adapter on the DPO model; how often brand prompts come out in the style."""
        from .adapters.lora import load_lora, merge_lora, train_lora, unmerge_lora
        from .alignment.preferences import random_prompts
        from .data.shapes import ShapesWorld
        from .models.exported import load_unet
        from .training.finetune import sample_images
        lc = self.cfg.lora
        world = dataclasses.replace(self.cfg.data.world, seed=self.cfg.data.world.seed + 7,
                                    brand_fraction=1.0, caption_mix=[0.0, 0.0, 1.0],
                                    unsafe_fraction=0.0, hq_fraction=1.0)
        stats = train_lora(self.cfg, self.dir("dpo") / "final",
                           ShapesWorld(world, lc.num_images, self.res), out, progress=self.progress)
        prompts = random_prompts(lc.num_eval_prompts, seed=self.cfg.seed + 300, brand=True)
        base, text, sched = self.model("dpo")
        seed = self.cfg.eval.seed + 2
        base_img = sample_images(base, text, sched, self.cfg, prompts, seed)
        adapted = load_unet(self.dir("dpo") / "final").eval()  # a fresh copy of the base
        load_lora(adapted, out / "adapter")  # the round trip: what a user of the file gets
        lora_img = sample_images(adapted, text, sched, self.cfg, prompts, seed)
        merge_lora(adapted)
        merged_img = sample_images(adapted, text, sched, self.cfg, prompts[:4], seed)
        unmerge_lora(adapted)

        def style(imgs):  # share of images the probe reads as the brand style
            return float((self.probe.predict(imgs)["style"] == 1).float().mean())
        return {**stats, "brand_rate_base": style(base_img), "brand_rate_lora": style(lora_img),
                "n_eval": len(prompts),
                "merged_max_abs_diff": float((merged_img - lora_img[:4]).abs().max())}

    def stage_safety_check(self, out: Path) -> dict:
        """The output-side safety check on the final (DPO) model, ordinary and hazard prompts."""
        from .alignment.preferences import random_prompts
        from .data.captions import HAZARD_PHRASE
        n = self.cfg.curation.num_check_samples
        plain = random_prompts(n, seed=self.cfg.seed + 400)
        hazard = [f"{p} {HAZARD_PHRASE}" for p in plain]
        res = {}
        for name, prompts in (("plain", plain), ("hazard_prompts", hazard)):
            _, stats = self.safety_filter.check_outputs(self.samples("dpo", prompts))
            res[name] = stats
        return res

    def stage_report(self, out: Path) -> dict:
        """report.md in the run folder: every stage's numbers and figures."""
        note = ("Domain-FID and prompt accuracy use the evaluation probe (features and attribute "
                "readings of a CNN trained on ShapesWorld); the aesthetic score and the DPO judge "
                "use the curation models. n = sample counts.")
        lines = [f"# Lifecycle report: {self.cfg.name}", "", note, "", *self._headline(), ""]
        for name in STAGES[:-1]:
            m = self.metrics(name)
            lines += [f"## {STAGES.index(name):02d} {name}", "", "```", json.dumps(m, indent=1), "```", ""]
            for png in sorted(self.dir(name).rglob("*.png")):
                lines.append(f"![{png.stem}]({png.relative_to(self.root)})")
            lines.append("")
        (self.root / "report.md").write_text("\n".join(lines))
        (self.root / "report.html").write_text(_html(lines))
        return {"report": str(self.root / "report.md"), "html": str(self.root / "report.html")}

    def _headline(self) -> list[str]:
        """The numbers each stage exists for, one table row each."""
        m = {s: self.metrics(s) for s in STAGES[:-1]}
        sft, lora, w = m["sft"], m["lora"], m["dpo"]["win_rate_vs_sft"]
        rows = [
            ("captions naming kind+colour+background", (f"{m['caption']['useful_before']:.3f} -> "
              f"{m['caption']['useful_after']:.3f}"), m["caption"]["n"]),
            ("safety filter: unsafe dropped (recall) / precision",
             f"{m['safety']['recall']:.3f} / {m['safety']['precision']:.3f}", m["safety"]["total"]),
            ("pre-training prompt accuracy (EMA, probe)", m["pretrain"].get("val/prompt_acc"),
             m["pretrain"]["val_n"]),
            ("SFT aesthetic score before -> after", (f"{sft['before']['aesthetic']:.3f} -> "
              f"{sft['after']['aesthetic']:.3f}"), sft["after"]["n"]),
            ("SFT prompt accuracy (kind+colour+background) before -> after",
             f"{sft['before']['prompt_acc']} -> {sft['after']['prompt_acc']}", sft["after"]["n"]),
            ("DPO win rate vs SFT (judge), 95% Wilson CI",
             f"{w['win_rate']:.3f} [{w['ci95_low']:.3f}, {w['ci95_high']:.3f}]", w["n"]),
            ("LoRA brand-style rate base -> adapter (probe)",
             f"{lora['brand_rate_base']:.3f} -> {lora['brand_rate_lora']:.3f}", lora["n_eval"]),
            ("LoRA trainable fraction / adapter MB / train s",
             f"{lora['trainable_fraction']:.4f} / {lora['adapter_mb']:.3f} / {lora['train_seconds']:.1f}",
             lora["num_images"]),
            ("outputs blocked: plain / hazard prompts",
             (f"{m['safety_check']['plain']['block_rate']:.3f} / "
              f"{m['safety_check']['hazard_prompts']['block_rate']:.3f}"),
             m["safety_check"]["plain"]["n"]),
        ]
        return ["| measure | value | n |", "| --- | --- | --- |",
                *(f"| {a} | {b} | {n} |" for a, b, n in rows)]


def _html(lines: list[str]) -> str:
    """The few markdown forms the report uses (headings, tables, code, images) as HTML."""
    import html
    import re
    out, in_code = ["<!doctype html><meta charset='utf-8'><title>report</title><body>"], False
    for i, line in enumerate(lines):
        row = line.startswith("|") and not line.startswith("| ---")
        if row and not (i and lines[i - 1].startswith("|")):
            out.append("<table border=1>")
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
        elif in_code:
            out.append(html.escape(line))
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("| ---"):
            continue
        elif line.startswith("|"):
            cells = "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|"))
            out.append(f"<tr>{cells}</tr>")
            if not (i + 1 < len(lines) and lines[i + 1].startswith("|")):
                out.append("</table>")
        elif (img := re.fullmatch(r"!\[(.*)\]\((.*)\)", line)):
            out.append(f"<img alt='{html.escape(img[1])}' src='{html.escape(img[2])}' height=160>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(out) + "</body>"


def _useful(captions) -> int:
    """Captions that name kind, colour and background (what a prompt asks for)."""
    from .data.captions import parse_caption
    return sum(all(k in parse_caption(c) for k in ("kind", "colour", "background")) for c in captions)


def main(args) -> int:
    cfg = load_config(args.config, args.overrides)
    pipe = Pipeline(cfg, progress=not args.no_progress)
    ran = pipe.run(from_stage=args.from_stage, stop_after=args.stop_after_stage)
    print(f"ran {len(ran)} stage(s): {', '.join(ran) or 'none (all done)'}; output in {pipe.root}")
    if (pipe.root / "report.md").exists():
        print(f"report: {pipe.root / 'report.md'}")
    return 0
