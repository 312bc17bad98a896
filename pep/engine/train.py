"""`pep train --variant V`: the training loop, on one CPU process or many GPUs alike.

Plain by design (torchvision's references/detection is the model): build the data, the model
and the optimiser from params.yaml, resume from the newest valid checkpoint if there is one,
then iterate: forward, summed losses (Eq. 8), backward (mixed precision on CUDA), gradient
clipping, step, learning-rate schedule. Only rank 0 prints, logs and writes.

What a run leaves in runs/<variant>/seed<seed>/: rolling checkpoints `ckpt_*.pt` (for resuming),
`train_log.jsonl` (one line per logging step: the curves) and `model_final.pt` (the weights and
what evaluation needs to rebuild the model).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from pep import distributed
from pep.config import run_dir as default_run_dir
from pep.data.coco import Collate, build_dataset
from pep.engine import checkpoint
from pep.engine.data import GlobalBatchSampler, SeededSamples
from pep.engine.preemption import Preempted, StopRequest, serve_through_stop_signals, signal_name
from pep.engine.schedule import lr_factor
from pep.errors import PepError
from pep.jsonfile import check_writable
from pep.model import build_model
from pep.progress import ProgressLog
from pep.stage_settings import model_settings, params_hash

log = logging.getLogger(__name__)
FINAL = checkpoint.FINAL


def build_optimizer(model: nn.Module, train_cfg: dict) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: one multi-tensor update instead of a Python loop over every parameter tensor.
    # AdamW (the CPU demo's) goes further, one fused kernel: a few percent of a CPU step.
    # SGD (the paper's, on GPUs) stays on the path verified with GradScaler on a GPU.
    if train_cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=train_cfg["lr"], momentum=train_cfg["momentum"],
                               weight_decay=train_cfg["weight_decay"], foreach=True)
    return torch.optim.AdamW(params, lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"], fused=True)


def _set_determinism(enabled: bool) -> None:
    # warn_only: a few CPU kernels have no deterministic twin; they warn instead of failing
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not enabled
        torch.backends.cudnn.deterministic = enabled


def train(cfg: dict, variant: str, seed: int, out_dir: Path | None = None,
          max_iters: int | None = None, tracker=None) -> dict:
    """Train one variant with one seed; returns a summary. Resumes when checkpoints exist."""
    tc = cfg["train"]
    ctx = distributed.init(tc["device"])
    out_dir = Path(out_dir or default_run_dir(cfg, variant, seed))
    if ctx.is_main:
        check_writable(out_dir, "`pep train`")
    _set_determinism(tc["deterministic"])
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP also broadcasts them)

    dataset = build_dataset(cfg, "train")
    model = build_model(cfg, variant, dataset.category_ids).to(ctx.device)
    if ctx.distributed and ctx.device.type == "cuda" and cfg["model"]["backbone"]["norm"] == "batch":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over all GPUs
    optimizer = build_optimizer(model, tc)
    iters_per_epoch = len(dataset) // tc["batch_size"]
    if iters_per_epoch == 0:
        raise PepError(f"the training set has {len(dataset)} images, fewer than "
                       f"train.batch_size={tc['batch_size']}")
    total = tc["epochs"] * iters_per_epoch if max_iters is None else min(max_iters, tc["epochs"] * iters_per_epoch)
    if max_iters is not None and total < tc["epochs"] * iters_per_epoch:
        _refuse_to_replace_a_trained_model(out_dir / FINAL, tc["epochs"] * iters_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, tc, iters_per_epoch, tc["epochs"] * iters_per_epoch))
    amp_dtype = autocast_dtype(tc["amp"], ctx.device)
    use_amp = amp_dtype is not None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start, elapsed_before = 0, 0.0
    run_hash = params_hash(cfg, variant)
    state, path = checkpoint.load_latest_valid(out_dir)
    if state is not None and state.get("params_hash") != run_hash:
        # The settings changed since this checkpoint (dvc/snakemake rerun the stage): resuming
        # would mix two configurations, so the run starts afresh.
        if ctx.is_main:
            log.warning("%s was written with other parameters (params_hash %s, now %s): "
                        "training %s seed %d from scratch", path, state.get("params_hash"), run_hash,
                        variant, seed)
            checkpoint.remove_all(out_dir)
        distributed.barrier()
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if ctx.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], ctx.device)
        start, elapsed_before = int(state["iteration"]), float(state["train_time_s"])
        if ctx.is_main:
            log.info("resuming %s seed %d from %s (iteration %d of %d)", variant, seed, path.name, start, total)
    elif ctx.is_main:
        log.info("training %s seed %d for %d iterations (%d epochs of %d) on %s x%d, %s",
                 variant, seed, total, tc["epochs"], iters_per_epoch, ctx.device.type, ctx.world_size,
                 f"mixed precision ({amp_dtype})" if use_amp else "full precision")

    core = model
    if ctx.distributed:
        model = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    sampler = GlobalBatchSampler(len(dataset), tc["batch_size"], seed, start, total, ctx.rank, ctx.world_size)
    loader = DataLoader(SeededSamples(dataset, seed), batch_sampler=sampler,
                        num_workers=cfg["data"]["num_workers"],
                        collate_fn=Collate(cfg["data"]["input"]["size_divisibility"]),
                        pin_memory=ctx.device.type == "cuda",
                        worker_init_fn=serve_through_stop_signals if cfg["data"]["num_workers"] else None,
                        generator=torch.Generator().manual_seed(seed))  # keeps the global RNG untouched
    log_file = out_dir / checkpoint.LOG
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_file, start)

    model.train()
    # a bar in a terminal; in a log (dvc, SLURM) a line every train.progress_every_iters or _s
    progress = ProgressLog(total, f"train {variant} seed {seed}", tc["progress_every_iters"],
                           tc["progress_every_s"], initial=start, unit="iter", epochs=tc["epochs"],
                           device=ctx.device, enabled=ctx.is_main)
    window_t, window_images, it = time.perf_counter(), 0, start
    run_started = time.perf_counter()
    with StopRequest() as stop:  # SIGTERM, SIGUSR1: stop after the iteration (pep.engine.preemption)
        for it, (images, targets) in enumerate(loader, start=start):
            images = images.to(ctx.device, non_blocking=True)
            targets = [_to_device(t, ctx.device) for t in targets]
            with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=use_amp):
                losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise PepError(f"training diverged: the loss is {loss.item()} at iteration {it} "
                               f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())}); "
                               f"lower train.lr or raise train.warmup_iters, then rerun (it resumes "
                               f"from the last checkpoint in {out_dir})")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc["clip_grad_norm"] > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(core.parameters(), tc["clip_grad_norm"])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            batch_images = images.shape[0] * ctx.world_size
            window_images += batch_images
            done = it + 1
            line = None

            if done % tc["log_every_iters"] == 0 or done == total:
                now = time.perf_counter()
                values = distributed.reduce_mean({k: float(v.detach()) for k, v in losses.items()}, ctx.device)
                record = {"iteration": done, "epoch": done / iters_per_epoch, "loss": sum(values.values()),
                          **values, "lr": optimizer.param_groups[0]["lr"],
                          "images_per_s": window_images / max(now - window_t, 1e-9)}
                if ctx.device.type == "cuda":
                    record["gpu_mem_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
                window_t, window_images = now, 0
                line = {"losses": values, "lr": record["lr"]}  # what a progress line shows, if one is due
                if ctx.is_main:
                    progress.postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                     img_s=f"{record['images_per_s']:.1f}")
                    with open(log_file, "a", encoding="utf-8") as f:
                        f.write(json.dumps(record) + "\n")
                    if tracker is not None:
                        tracker.log_metrics({k: v for k, v in record.items() if k != "iteration"}, step=done)
            if done % tc["checkpoint_every_iters"] == 0 or done == total:
                _save(out_dir, done, core, optimizer, scheduler, scaler, ctx,
                      elapsed_before + time.perf_counter() - run_started, run_hash)
            if progress.due(done):  # only then are the losses read (a GPU sync); rank 0's own between log steps
                line = line or {"losses": {k: float(v.detach()) for k, v in losses.items()},
                                "lr": optimizer.param_groups[0]["lr"]}
                progress.update(done, batch_images, epoch=done / iters_per_epoch, **line)
            else:
                progress.update(done, batch_images)
            # a stop signal (the scheduler's time limit, preemption): this iteration is done;
            # every rank stops here, after one checkpoint, and the rerun resumes from it
            if done < total and (signum := stop.agreed(ctx.device)) is not None:
                if done % tc["checkpoint_every_iters"] != 0:
                    _save(out_dir, done, core, optimizer, scheduler, scaler, ctx,
                          elapsed_before + time.perf_counter() - run_started, run_hash)
                progress.close()
                raise Preempted(f"training {variant} seed {seed} stopped by {signal_name(signum)} after "
                                f"iteration {done} of {total}; its checkpoint is "
                                f"{checkpoint.checkpoint_path(out_dir, done)}: the same command resumes it")
    progress.close()

    train_time = elapsed_before + time.perf_counter() - run_started
    if ctx.is_main:
        _save_final(out_dir / FINAL, core, dataset, cfg, variant, seed, total, train_time)
    distributed.barrier()
    return {"variant": variant, "seed": seed, "iterations": total, "train_time_s": train_time,
            "images_seen": total * tc["batch_size"], "run_dir": str(out_dir),
            "resumed_from": start}


def train_command(cfg: dict, variant: str, seeds: list[int], argv: list[str], tracker_factory,
                  max_iters: int | None = None) -> int:
    """`pep train`: every seed of `seeds`, each in its MLflow run (`tracker_factory(seed, enabled)`
    returns the run's recorder, e.g. pep.tracking.runs.Tracker; only rank 0's records). Launches
    torchrun first where train.device asks for several processes (`argv` is the command's own)."""
    processes = distributed.processes_to_launch(cfg["train"])
    if not distributed.under_launcher() and (plan := distributed.launch_plan(processes, argv)):
        # One command for dvc, Snakemake and SLURM jobs: it starts torchrun itself (in a SLURM
        # allocation of several nodes, one torchrun per node through srun; see pep.distributed).
        return distributed.launch(plan)
    from pep.engine.curves import plot_training_curves

    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        for seed in seeds:
            tracker = tracker_factory(seed, enabled=main_rank)
            with tracker.start("train"):
                summary = train(cfg, variant, seed, max_iters=max_iters, tracker=tracker)
                if main_rank:
                    folder = default_run_dir(cfg, variant, seed)
                    curves = plot_training_curves(folder / checkpoint.LOG, folder / "training_curves.png",
                                                  f"{variant}, seed {seed}")
                    tracker.log_metrics({"train_time_s": summary["train_time_s"],
                                         "images_seen": summary["images_seen"]})
                    tracker.log_dict({k: v for k, v in cfg.items() if k != "params_file"}, "config.json")
                    tracker.log_artifact(folder / checkpoint.LOG)
                    tracker.log_artifact(curves)
                    model_uri = None
                    if tracker.enabled:
                        model_uri = tracker.log_model(
                            folder / FINAL, checkpoint.load(folder / FINAL),
                            register=cfg["tracking"]["register_models"] and max_iters is None)
                    print(f"trained {variant} seed {seed}: {summary['iterations']} iterations, "
                          f"{summary['images_seen']} images in {summary['train_time_s']:.0f} s -> "
                          f"{folder / FINAL}" + (f" (MLflow: {model_uri})" if model_uri else ""))
        if main_rank and max_iters is None:
            # Every seed is done: the checkpoints have served (a crash in a later seed resumed the
            # earlier ones at their end). Without them, the next run of this stage, which
            # dvc or Snakemake start only when code or settings changed, trains afresh.
            for seed in seeds:
                checkpoint.remove_checkpoints(default_run_dir(cfg, variant, seed))
    finally:
        distributed.shutdown()
    return 0


def _refuse_to_replace_a_trained_model(final: Path, full: int) -> None:
    """A smoke run (--max-iters) must not overwrite the result of a whole training."""
    if not final.is_file():
        return
    try:
        done = int(checkpoint.load(final)["iterations"])
    except Exception:  # a damaged or foreign file: training would replace it anyway
        return
    if done >= full:
        raise PepError(f"{final} is a fully trained model ({done} iterations); a smoke run "
                       "(--max-iters) would replace it: run the smoke test in a project copy (pep "
                       "train --params COPY/params.yaml writes beside that file), or delete the model first")


def autocast_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """Mixed precision where it pays: float16 (with loss scaling) on CUDA; bfloat16 on CPUs with
    native bf16 (AVX512-BF16 / AMX, about 2x on convolutions); otherwise full precision."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def _to_device(target: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in target.items()}


def _truncate_log(path: Path, iteration: int) -> None:
    """After a resume, drop log lines written after the checkpoint (they are redone)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["iteration"] <= iteration]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _save(out_dir, iteration, model, optimizer, scheduler, scaler, ctx, train_time, run_hash) -> None:
    if ctx.is_main:
        state = {"iteration": iteration, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "rng_cpu": torch.get_rng_state(), "train_time_s": train_time, "params_hash": run_hash}
        if ctx.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(ctx.device)
        checkpoint.save_atomic(state, checkpoint.checkpoint_path(out_dir, iteration))
        checkpoint.prune(out_dir)
    distributed.barrier()


def _save_final(path: Path, model, dataset, cfg, variant, seed, iterations, train_time) -> None:
    checkpoint.save_atomic({
        "model": model.state_dict(), "variant": variant, "seed": seed, "iterations": iterations,
        "category_ids": list(dataset.category_ids), "class_names": list(dataset.class_names),
        "train_time_s": train_time, "images_seen": iterations * cfg["train"]["batch_size"],
        # what builds the network, so that a model that no longer fits the settings is told
        # apart by the keys that changed, not by a tensor size mismatch
        "settings": model_settings(cfg, variant),
    }, path)


def load_trained(cfg: dict, variant: str, seed: int, device: torch.device | str = "cpu"):
    """The trained model of a run (eval mode) and its final record; a PepError that says what
    to do when the file is missing, damaged, not a model of `pep train`, or of other settings."""
    path = default_run_dir(cfg, variant, seed) / FINAL
    retrain = f"retrain with `pep train --variant {variant} --seed {seed}`"
    if not path.exists():
        raise PepError(f"{path}: no trained model; run `pep train --variant {variant} --seed {seed}` first")
    try:
        state = checkpoint.load(path, map_location=device)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise PepError(f"{path}: cannot be loaded ({type(exc).__name__}: {first}); delete it and "
                       f"{retrain}") from None
    missing = [k for k in ("model", "category_ids") if not isinstance(state, dict) or k not in state]
    if missing:
        raise PepError(f"{path}: not a model written by `pep train` (no {' or '.join(map(repr, missing))}); "
                       f"{retrain}")
    model = build_model(cfg, variant, state["category_ids"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise PepError(f"{path}: does not fit the current settings ({_settings_change(state, cfg, variant, model)}); "
                       f"restore the settings it was trained with, or {retrain}") from None
    return model.to(device).eval(), state


def _settings_change(state: dict, cfg: dict, variant: str, model: nn.Module) -> str:
    """What differs between the model file and the settings: changed keys where the file
    records its settings, else the first weights whose shapes differ."""
    from pep.config import flatten

    saved = state.get("settings")
    if isinstance(saved, dict):
        then, now = flatten(saved), flatten(model_settings(cfg, variant))
        changed = [f"{k}: {then.get(k, '(absent)')} when trained, {now.get(k, '(absent)')} now"
                   for k in sorted(then.keys() | now.keys()) if then.get(k) != now.get(k)]
        if changed:
            return "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
    current = model.state_dict()
    saved_weights = state["model"]
    shapes = [f"{k}: {list(v.shape)} saved, {list(current[k].shape)} now" for k, v in saved_weights.items()
              if k in current and hasattr(v, "shape") and v.shape != current[k].shape]
    absent = sorted(current.keys() - saved_weights.keys())
    extra = sorted(saved_weights.keys() - current.keys())
    parts = shapes[:2] + ([f"{len(absent)} weight(s) the file lacks, e.g. {absent[0]}"] if absent else []) \
        + ([f"{len(extra)} weight(s) the model lacks, e.g. {extra[0]}"] if extra else [])
    return "; ".join(parts) + "; trained with other model settings"
