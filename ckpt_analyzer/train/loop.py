"""The training loop: one width at a time, resumable, every file atomic (docs/checkpoints.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from .._atomic import atomic_write_json
from ..checkpoints import (
    RUN_FORMAT,
    RunLock,
    create_run_json,
    dataset_manifest,
    is_done,
    mark_done,
    only_start_files,
    read_header,
    read_run_json,
    read_state_dict,
    remove_stale_start_files,
    save_labels,
    save_tensors,
    write_checkpoint,
)
from ..checkpoints.layout import (
    checkpoint_path,
    has_checkpoint_files,
    is_checkpoint_temporary,
    run_json_path,
    train_state_path,
    width_dir,
)
from ..config import settings_diff
from ..errors import CkptError
from ..functional.loss_error import checkpoint_metrics
from ..seeds import derive_seed
from .config import TrainConfig
from .schedule import lr_at, save_epochs

STATE_EVERY_S = 60.0


@dataclass
class WidthResult:
    width: int
    params: int
    epochs_trained: int
    final: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------- manifest
def make_manifest(cfg: TrainConfig, data: Any, smoothing: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "format": RUN_FORMAT,
        "version": __version__,
        "dataset": dataset_manifest(cfg.dataset, cfg.data_root, cfg.split_seed, data),
        "label_noise": {
            "kind": cfg.noise_kind,
            "fraction": cfg.label_noise,
            "seed": cfg.seed,
            "classes": None if cfg.noise_classes is None else list(cfg.noise_classes),
        },
        "label_smoothing": None if smoothing is None else dict(smoothing),
        "arch": cfg.arch,
        "widths": list(cfg.widths),
        "epochs": cfg.epochs,
        "save": {"spec": cfg.save, "epochs": save_epochs(cfg.save, cfg.epochs)},
        "optimizer": {
            "name": cfg.optimizer,
            "lr": cfg.lr,
            "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay,
            "warmup_epochs": cfg.warmup_epochs,
            "schedule": cfg.schedule,
        },
        "batch_size": cfg.batch_size,
        "augment": cfg.augment,
        "seed": cfg.seed,
    }


def manifest_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Settings that differ between two manifests (the package version is not a setting)."""
    return settings_diff(old, new, ignore=("version",))


# ---------------------------------------------------------------- pieces
def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def augment_batch(x01: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (side/8, 4 px at 32) and horizontal flip, batched."""
    n, _, h, w = x01.shape
    pad = max(1, h // 8)
    padded = F.pad(x01, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x01.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x01.device)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x01.device)
    rows = (oy[:, None] + torch.arange(h, device=x01.device)[None])  # (n, h)
    cols = (ox[:, None] + torch.arange(w, device=x01.device)[None])  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_r = rows[:, None, :, None].expand(-1, x01.shape[1], -1, padded.shape[-1])
    out = padded.gather(2, idx_r)
    idx_c = cols[:, None, None, :].expand(-1, x01.shape[1], h, -1)
    return out.gather(3, idx_c)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                plain[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                       meta: Mapping[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["plain"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_train_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                     gen: torch.Generator, epoch: int, step: int) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_t, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_t)
    tensors["rng.data"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    save_tensors(path, tensors, {"format": "ckpt-analyzer.train-state/1", "epoch": str(epoch),
                                 "step": str(step), "optimizer": json.dumps(opt_meta)})


def load_train_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                     gen: torch.Generator, device: torch.device) -> tuple[int, int]:
    _, meta = read_header(path)
    tensors = read_state_dict(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    _restore_optimizer(opt, tensors, json.loads(meta["optimizer"]))  # moves state to the params' device
    gen.set_state(tensors["rng.data"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["epoch"]), int(meta["step"])


# ---------------------------------------------------------------- the run
class Trainer:
    """Trains ``cfg.widths`` one after the other into ``out``; re-running resumes."""

    def __init__(self, cfg: TrainConfig, out: str | Path, device: torch.device,
                 progress: Callable[[str, int, int, int, dict[str, float]], None] | None = None) -> None:
        self.cfg = cfg
        self.out = Path(out)
        self.device = device
        self.progress = progress
        self.warnings: list[str] = []
        self._lock: RunLock | None = None

    def close(self) -> None:
        """Let the next writer of the folder in (:meth:`run` does this when it ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def prepare(self, lock: bool = True) -> dict[str, Any]:
        """Check the settings, load the data and create (or check, to resume) the run folder.

        ``lock``: hold the folder's writer lock (``<run>/.writer.lock``) until :meth:`run`
        ends or :meth:`close`; a second live writer is refused naming the holder. The
        parallel trainer's workers pass False: their parent holds it."""
        from ..data import load_dataset
        from ..data.noise import label_noise
        from ..models import build_model, check_model_size

        cfg = self.cfg
        if self.out.exists() and not self.out.is_dir():
            raise CkptError("exists and is a file, not a run folder", self.out)
        data = load_dataset(cfg.dataset, cfg.data_root, cfg.split_seed)
        labels, mask = label_noise(data.y_train.numpy(), data.num_classes, cfg.noise_kind,
                                   cfg.label_noise, cfg.seed, cfg.noise_classes)
        # fail on a bad --arch/--model, or a width too large to build, before anything is written
        for w in cfg.widths:
            check_model_size(cfg.arch, w, data.num_classes, data.in_channels)
        build_model(cfg.arch, cfg.widths[0], data.num_classes, data.in_channels)
        self.data = data
        self.x_train = data.x_train.to(self.device)  # [0, 1] pixels: augmentation works here
        self.x_test = data.x_test.to(self.device)
        self.y_clean = data.y_train.to(self.device)
        self.y_train = torch.as_tensor(labels, dtype=torch.int64, device=self.device)
        self.noisy = torch.as_tensor(mask, dtype=torch.bool, device=self.device)
        self.y_test = data.y_test.to(self.device)
        self.mean = torch.tensor(data.mean, device=self.device)
        self.std = torch.tensor(data.std, device=self.device)
        self.xs_train = self.to_model(self.x_train)  # normalized once, for evaluation
        self.xs_test = self.to_model(self.x_test)
        self.smoother = self._make_smoother()
        manifest = make_manifest(cfg, data, self.smoother.manifest if self.smoother else None)

        if (self.out.is_dir() and not run_json_path(self.out).exists()
                and not only_start_files(self.out)):  # before the lock file is added to it
            raise CkptError("is not empty and holds no run.json (use a new or empty folder)", self.out)
        if lock and self._lock is None:
            self._lock = RunLock(self.out, "ckpt-train").acquire()
        try:
            return self._create(manifest, labels, mask)
        except BaseException:
            self.close()
            raise

    def _create(self, manifest: dict[str, Any], labels: Any, mask: Any) -> dict[str, Any]:
        """The folder's run.json and labels, under the lock: checked to resume, or created."""
        data = self.data
        old = read_run_json(self.out) if self.out.is_dir() else None
        if old is not None:
            diff = manifest_diff(old, manifest)
            if diff and self._has_checkpoints():
                raise CkptError("holds a run with other settings: " + "; ".join(diff)
                                + " (use another OUT folder)", run_json_path(self.out))
            if diff:  # a manifest without a single checkpoint: nothing to keep, start afresh
                self.warnings.append(f"{run_json_path(self.out)}: no checkpoint was written with "
                                     "its settings; starting afresh with the new ones ("
                                     + "; ".join(diff) + ")")
                old = None
        elif self.out.is_dir() and not only_start_files(self.out):
            raise CkptError("is not empty and holds no run.json (use a new or empty folder)", self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if old is None:
            remove_stale_start_files(self.out)  # left by a run killed while starting
            save_labels(self.out, labels, data.y_train, mask)
            if run_json_path(self.out).exists():  # a manifest without checkpoints: replaced
                atomic_write_json(run_json_path(self.out), manifest)
            else:
                create_run_json(self.out, manifest)  # exclusive: one run per folder
        self.manifest = manifest
        return manifest

    def _has_checkpoints(self) -> bool:
        return has_checkpoint_files(self.out)

    def _make_smoother(self) -> Any:
        if self.cfg.label_smoothing is None:
            return None
        from ..config import ConfigError
        from ..functional.smoothing import LabelSmoother

        try:
            return LabelSmoother.for_training(self.cfg, self.xs_train, self.data.num_classes)
        except ValueError as exc:  # e.g. a Fourier index beyond Nyquist for these images
            raise ConfigError(str(exc)) from None

    def to_model(self, x01: torch.Tensor) -> torch.Tensor:
        from ..data import normalize

        return normalize(x01, self.mean, self.std)

    def run(self) -> list[WidthResult]:
        try:
            results = [self.train_width(w) for w in self.cfg.widths]
            if all(is_done(self.out, w) for w in self.cfg.widths):
                mark_done(self.out, widths=list(self.cfg.widths))
        finally:
            self.close()
        return results

    def _metrics(self, model: nn.Module) -> dict[str, float]:
        return checkpoint_metrics(model, self.xs_train, self.y_train, self.noisy, self.xs_test,
                                  self.y_test)

    def _save(self, model: nn.Module, width: int, epoch: int, step: int) -> dict[str, float]:
        m = self._metrics(model)
        write_checkpoint(self.out, model.state_dict(), arch=self.cfg.arch, width=width,
                         epoch=epoch, step=step, num_classes=self.data.num_classes,
                         in_channels=self.data.in_channels, image_size=self.data.image_size,
                         metrics=m)
        return m

    def train_width(self, width: int) -> WidthResult:
        from ..models import build_model, count_parameters

        cfg, dev = self.cfg, self.device
        t0 = time.perf_counter()
        seed = derive_seed(cfg.seed, width)
        torch.manual_seed(seed)
        model = build_model(cfg.arch, width, self.data.num_classes, self.data.in_channels).to(dev)
        opt = make_optimizer(cfg, model)
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, width, 1))
        wdir = width_dir(self.out, width)
        wdir.mkdir(exist_ok=True)
        for stale in wdir.iterdir():  # checkpoint temporaries left by a killed run
            if is_checkpoint_temporary(stale.name) and stale.is_file():
                stale.unlink()
        state_path = train_state_path(self.out, width)
        saves = set(save_epochs(cfg.save, cfg.epochs))
        n = len(self.x_train)
        steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
        result = WidthResult(width, count_parameters(model), cfg.epochs)

        final = checkpoint_path(self.out, width, cfg.epochs)
        if final.exists() and not state_path.exists():  # finished earlier
            meta = read_header(final)[1]
            result.final = {k: float(meta[k]) for k in
                            ("train_loss", "train_error", "noisy_error", "test_loss", "test_error")
                            if k in meta}
            result.resumed_from = cfg.epochs
            if not is_done(self.out, width):  # a run written before the markers existed
                mark_done(self.out, width, epochs=sorted(saves))
            return result
        start, step = 0, 0
        if state_path.exists():
            start, step = load_train_state(state_path, model, opt, gen, dev)
            result.resumed_from = start
        elif 0 in saves:
            self._save(model, width, 0, 0)
        metrics: dict[str, float] = {}
        last_state = time.monotonic()
        for epoch in range(start + 1, cfg.epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=gen).to(dev)
            for b in range(steps_per_epoch):
                idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                x01 = self.x_train[idx]
                if cfg.augment:
                    x01 = augment_batch(x01, gen)
                x = self.to_model(x01)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, steps_per_epoch, cfg.epochs, cfg.lr, cfg.schedule,
                                    cfg.warmup_epochs)
                out = model(x)
                if self.smoother is not None:
                    loss = self.smoother.loss(out, x, self.y_train[idx])
                else:
                    loss = F.cross_entropy(out, self.y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            if epoch in saves:
                metrics = self._save(model, width, epoch, step)
            # resume point: at every saved checkpoint, and at least every STATE_EVERY_S seconds
            if epoch < cfg.epochs and (epoch in saves or time.monotonic() - last_state > STATE_EVERY_S):
                save_train_state(state_path, model, opt, gen, epoch, step)
                last_state = time.monotonic()
            if self.progress:
                self.progress("epoch", width, epoch, cfg.epochs, metrics)
        if state_path.exists():
            state_path.unlink()
        mark_done(self.out, width, epochs=sorted(saves))
        result.final = metrics or self._metrics(model)
        result.seconds = time.perf_counter() - t0
        return result


def result_row(r: WidthResult) -> dict[str, Any]:
    return {"width": r.width, "params": r.params, "resumed_from": r.resumed_from,
            "seconds": round(r.seconds, 2), **r.final}


def as_json(results: list[WidthResult]) -> str:
    return json.dumps([result_row(r) for r in results], indent=2)

