"""Classical baselines of paper Table 4: the same CNN, the same data protocol, trained directly.

Methods (``--method``):

- ``classical``: the 6,690-weight CNN trained directly (paper: 50 epochs, Adam 1e-3, batch 128).
- ``weight-sharing``: each weight matrix of a shared layer (conv kernels flattened per output
  channel, linear layers row by row) is built from ``share_k`` trainable row vectors repeated in
  sequence: row ``i`` is shared vector ``i mod k``. Biases stay free. ``share_layers`` picks the
  layers (default all four); ``k`` at or above a layer's row count leaves that layer unshared.
  Trainable count: ``sum over shared layers of min(k, rows) * row_length`` + the unshared layers
  + 50 biases. (The paper's 4,770 is exactly fc1 halved: ``share_layers = ["fc1"]``, ``k = 10``.)
- ``pruning``: random pruning at initialisation. Each weight tensor keeps exactly
  ``round(keep_ratio * size)`` (at least one) randomly chosen entries; the others are zero and
  never trained (their gradient is exactly zero, so Adam never moves them). Biases stay free.
  Trainable count: the kept weights + 50 biases (3,370 at ``keep_ratio = 0.5``, the paper's number).

Options for longer training (the distillation teachers, :mod:`pqt.distill.teacher`): ``augment_shift``
translates each training image by a random offset of up to N pixels, drawn afresh every epoch from
the seed; ``lr_schedule = "cosine"`` decays the learning rate to zero over the epochs. Both are off
by default (the paper's protocol).

A run directory gets the same files as ``pqt train``: ``config.json``, ``checkpoint.pt`` (after
every epoch; an interrupted run resumes exactly), ``model.pt`` (the full network's plain
``state_dict``, usable by ``pqt evaluate``), ``metrics.json`` (same contract, ``history`` per
epoch, ``status`` "finished" at the end) and ``train.log``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pqt.data import training_splits
from pqt.errors import UserError
from pqt.studies.baseline_config import BaselineConfig
from pqt.targets import create_target, loss_and_accuracy, n_parameters
from pqt.training import provenance, run_files

_SHUFFLE_SALT, _MASK_SALT, _AUGMENT_SALT = 11, 12, 13


def random_shift(images: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image translated by its own random (dy, dx) in [-shift, shift], the border filled with zeros."""
    n, _, h, w = images.shape
    padded = F.pad(images, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
    cols = (offsets[:, 1, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
    return padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def _weight_layers(target: nn.Module) -> list[str]:
    return [name.rsplit(".", 1)[0] for name, _ in target.named_parameters() if name.endswith(".weight")]


class BaselineNet(nn.Module):
    """The target network under a parametrisation: free, shared rows, or a fixed pruning mask.

    The target's own parameters only provide the (seeded) initial values; training updates the
    tensors in ``self.free``. :meth:`materialize` gives the full weights in ``named_parameters`` order.
    """

    def __init__(self, target: nn.Module, config: BaselineConfig) -> None:
        super().__init__()
        self.target = target.requires_grad_(False)
        self.method = config.method
        self.free = nn.ParameterDict()
        self.layout: dict[str, tuple[str, tuple[int, ...], int]] = {}  # param -> (how, shape, rows)
        layers = _weight_layers(target)
        shared = set(config.share_layers) if config.share_layers is not None else set(layers)
        if config.method == "weight-sharing":
            unknown = sorted(shared - set(layers))
            if unknown:
                raise UserError(f"share-layers: unknown layer(s) {', '.join(unknown)}; the target's weight "
                                f"layers are {', '.join(layers)}")
        mask_rng = torch.Generator().manual_seed(
            int(np.random.default_rng([config.seed, _MASK_SALT]).integers(2**62)))
        for name, p in target.named_parameters():
            key = name.replace(".", "__")
            layer, kind = name.rsplit(".", 1)
            value = p.detach().clone()
            if config.method == "weight-sharing" and kind == "weight" and layer in shared:
                rows = value.shape[0]
                k = min(int(config.share_k), rows)
                self.free[key] = nn.Parameter(value.reshape(rows, -1)[:k].clone())
                self.layout[name] = ("shared", tuple(value.shape), rows)
            elif config.method == "pruning" and kind == "weight":
                n = value.numel()
                keep = max(1, math.floor(config.keep_ratio * n + 0.5))
                mask = torch.zeros(n)
                mask[torch.randperm(n, generator=mask_rng)[:keep]] = 1.0
                mask = mask.reshape(value.shape)
                self.register_buffer(f"mask__{key}", mask)
                self.free[key] = nn.Parameter(value * mask)
                self.layout[name] = ("masked", tuple(value.shape), 0)
            else:
                self.free[key] = nn.Parameter(value)
                self.layout[name] = ("free", tuple(value.shape), 0)

    def mask(self, name: str) -> torch.Tensor:
        return getattr(self, f"mask__{name.replace('.', '__')}")

    def materialize(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, (how, shape, rows) in self.layout.items():
            p = self.free[name.replace(".", "__")]
            if how == "shared":
                idx = torch.arange(rows, device=p.device) % p.shape[0]
                out[name] = p[idx].reshape(shape)
            elif how == "masked":
                out[name] = p * self.mask(name)
            else:
                out[name] = p
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.target, self.materialize(), (x,))

    def trainable_parameters(self) -> int:
        total = 0
        for name, (how, _, _) in self.layout.items():
            p = self.free[name.replace(".", "__")]
            total += int(self.mask(name).sum().item()) if how == "masked" else p.numel()
        return total


def trainable_count(config: BaselineConfig) -> int:
    """Exact trainable parameter count of a baseline configuration (no training, no data)."""
    from pqt.data import input_shape_of

    target = create_target(config.target, input_shape_of(config.dataset), config.activation)
    return BaselineNet(target, config.validate()).trainable_parameters()


# --------------------------------------------------------------------------- training


class BaselineTrainer:
    def __init__(self, config: BaselineConfig, out_dir: Path, log: Callable[[str], None] = print,
                 progress: Callable[[float], None] | None = None) -> None:
        self.config = config.validate()
        self.out_dir = Path(out_dir)
        self.log = log
        self.progress = progress
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = torch.device(config.device)
        self.train_set, self.validation_set, self.test_set = training_splits(
            config.dataset, config.data_dir, config.train_limit, config.test_limit, config.validation_size)
        torch.manual_seed(config.seed)  # the target's default initialisation
        target = create_target(config.target, self.train_set.input_shape, config.activation)
        self.target_parameters = n_parameters(target)
        self.net = BaselineNet(target, config).to(self.device)
        self.adam = torch.optim.Adam(self.net.free.parameters(), lr=config.lr)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.wall_seconds = 0.0

    # ---- checkpointing -----------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """Tensors and plain Python values only: loadable with weights_only=True."""
        return {"epoch": self.epoch, "net": self.net.state_dict(), "adam": self.adam.state_dict(),
                "history": self.history, "wall_seconds": self.wall_seconds, "config": self.config.to_dict()}

    def load(self) -> None:
        path = self.out_dir / run_files.CHECKPOINT
        try:
            ck = run_files.load_torch(path)
            self.net.load_state_dict(ck["net"])
            self.adam.load_state_dict(ck["adam"])
            self.epoch, self.history, self.wall_seconds = ck["epoch"], ck["history"], ck["wall_seconds"]
        except Exception as e:  # damaged, from other settings, or carrying pickled code (refused): one line
            detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot resume from {path} ({type(e).__name__}: {detail}); it is damaged or not a "
                            "checkpoint of this baseline: delete the directory or choose another --out") from None

    # ---- one epoch ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, dataset: Any) -> tuple[float, float]:
        weights = self.net.materialize()
        return loss_and_accuracy(lambda x: torch.func.functional_call(self.net.target, weights, (x,)),
                                 dataset.images, dataset.labels, self.device)

    def run_epoch(self, e: int) -> dict[str, Any]:
        c, images, labels = self.config, self.train_set.images, self.train_set.labels
        started = time.perf_counter()
        shuffle = torch.Generator().manual_seed(
            int(np.random.default_rng([c.seed, e, _SHUFFLE_SALT]).integers(2**62)))
        order = torch.randperm(len(images), generator=shuffle)
        augment = torch.Generator().manual_seed(
            int(np.random.default_rng([c.seed, e, _AUGMENT_SALT]).integers(2**62)))
        steps = math.ceil(len(order) / c.batch_size)
        losses = []
        for step, start in enumerate(range(0, len(order), c.batch_size)):
            if c.lr_schedule == "cosine":  # from the step index alone, so a resumed run follows the same rates
                for group in self.adam.param_groups:
                    group["lr"] = c.lr * 0.5 * (1.0 + math.cos(math.pi * (e * steps + step) / (c.epochs * steps)))
            idx = order[start : start + c.batch_size]
            x, y = images[idx], labels[idx].to(self.device)
            if c.augment_shift:
                x = random_shift(x, c.augment_shift, augment)
            x = x.to(self.device)
            self.adam.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.net(x), y)
            if not math.isfinite(loss.item()):
                raise UserError(f"loss became {loss.item()} in epoch {e + 1}; stopped (the last good checkpoint, "
                                f"epoch {e}, is kept in {self.out_dir}): try a lower --lr")
            loss.backward()
            self.adam.step()
            losses.append(loss.item())
        train_loss, train_acc = self.evaluate(self.train_set)
        test_loss, test_acc = self.evaluate(self.test_set)
        validation = {}
        if self.validation_set is not None:
            val_loss, val_acc = self.evaluate(self.validation_set)
            validation = {"validation_loss": val_loss, "validation_accuracy": val_acc}
        seconds = time.perf_counter() - started
        entry = {"epoch": e + 1, "adam_loss": float(np.mean(losses)), "train_loss": train_loss,
                 "train_accuracy": train_acc, "test_loss": test_loss, "test_accuracy": test_acc, **validation,
                 "seconds": seconds}
        self.epoch += 1
        self.history.append(entry)
        self.wall_seconds += seconds
        state_dict = {k: v.detach().clone().cpu() for k, v in self.net.materialize().items()}
        try:  # model first, then checkpoint, then metrics: all three or none (see run_files.write_together)
            run_files.write_together([
                (self.out_dir / run_files.MODEL, run_files.torch_writer(state_dict)),
                (self.out_dir / run_files.CHECKPOINT, run_files.torch_writer(self.checkpoint())),
                (self.out_dir / run_files.METRICS, run_files.json_writer(self.metrics("running")))])
        except BaseException:
            self.epoch -= 1
            self.history.pop()
            self.wall_seconds -= seconds
            raise
        return entry

    def metrics(self, status: str, reason: str | None = None) -> dict[str, Any]:
        c, last = self.config, (self.history[-1] if self.history else {})
        trainable = self.net.trainable_parameters()
        return {
            "status": status, "stop_reason": reason,
            **run_files.final_results(last),
            "method": c.method, "share_k": c.share_k,
            "share_layers": list(c.share_layers) if c.share_layers is not None else None,
            "keep_ratio": c.keep_ratio,
            "trainable_parameters": trainable, "paper_count_parameters": trainable,
            "target_parameters": self.target_parameters,
            "compression_ratio": self.target_parameters / trainable,
            "parameter_counting": ("trainable_parameters counts the independent trainable values: shared row "
                                   "vectors once, pruned weights not at all, every bias"),
            "dataset": c.dataset, "train_size": len(self.train_set), "test_size": len(self.test_set),
            "validation_size": len(self.validation_set) if self.validation_set is not None else 0,
            "epochs_completed": self.epoch, "epochs_planned": c.epochs, "seed": c.seed,
            "lr": c.lr, "batch_size": c.batch_size, "wall_seconds": self.wall_seconds,
            "history": self.history,
        }

    def run(self) -> dict[str, Any]:
        c = self.config
        status = "running"
        if self.progress:
            self.progress(self.epoch / c.epochs)
        reason = None
        run_files.remove_stale_temp_files(self.out_dir)
        try:
            for e in range(self.epoch, c.epochs):
                entry = self.run_epoch(e)
                self.log(f"epoch {entry['epoch']}/{c.epochs} | batch loss {entry['adam_loss']:.4f} | train "
                         f"{entry['train_loss']:.4f}/{100 * entry['train_accuracy']:.2f}% | test "
                         f"{entry['test_loss']:.4f}/{100 * entry['test_accuracy']:.2f}% | {entry['seconds']:.1f}s")
                if self.progress:
                    self.progress(self.epoch / c.epochs)
            status = "finished"
        except KeyboardInterrupt:
            status, reason = "interrupted", "interrupted (Ctrl-C)"
            raise
        except UserError as e:
            status, reason = "stopped", str(e)
            raise
        except BaseException as e:
            status, reason = "failed", f"{type(e).__name__}: {e}"
            raise
        finally:
            # Every stop says why, even before the first epoch; a full disk keeps the last epoch's metrics.json.
            try:
                run_files.write_json(self.out_dir / run_files.METRICS, self.metrics(status, reason))
            except run_files.RunFileError:
                if status == "finished":
                    raise
        return self.metrics(status)


def run_baseline(config: BaselineConfig, out_dir: str | Path, *, log: Callable[[str], None] | None = None,
                 progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Train (or resume, or skip if finished) the baseline run in ``out_dir``; returns its metrics.

    A directory holding a run of different settings is refused (only ``epochs`` may grow).
    """
    from pqt.studies.sweep import inspect_run

    out = Path(out_dir)
    config.validate()
    state, detail = inspect_run(out, "baseline", config.to_dict())
    if state == "mismatch":
        raise UserError(detail)
    if state == "finished":
        return run_files.read_json(out / run_files.METRICS)
    if log is None:
        def log(line: str) -> None:
            print(line, flush=True)
            run_files.append_log(out / run_files.LOG, line)
    trainer = BaselineTrainer(config, out, log=log, progress=progress)
    if state == "resume":
        trainer.load()
        log(f"resuming {out} after epoch {trainer.epoch} of {config.epochs}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        log(f"pqt baseline {config.method} -> {out} | {config.dataset} {len(trainer.train_set)}/"
            f"{len(trainer.test_set)} | trainable {trainer.net.trainable_parameters()} of "
            f"{trainer.target_parameters} weights")
    run_files.write_json(out / run_files.CONFIG, config.to_dict())
    provenance.record(out, config.dataset, config.data_dir, config.threads, config.device,
                      "resume" if state == "resume" else "start")
    return trainer.run()
