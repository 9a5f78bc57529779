"""Write the checkpoint contract (docs/checkpoints.md) from any training loop.

:class:`RunWriter` writes what ``ckpt-train`` writes: ``run.json`` (same format and keys),
``labels.safetensors`` and one ``w<W>/e<EEEEE>.safetensors`` per :meth:`RunWriter.save`, each
file atomically, so ``ckpt-analyze run`` reads the folder like a run of the built-in trainer::

    writer = RunWriter("runs/mine", model=make_model, dataset="digits", widths=[2, 8], epochs=20,
                       label_noise=0.2, optimizer={"name": "sgd", "lr": 0.05})
    x, y = writer.x_train, writer.y_train          # normalized inputs, labels to train on
    for width in writer.widths:
        net = make_model(width, writer.num_classes, writer.in_channels)
        writer.save(net, width=width, epoch=0)     # the initialization
        for epoch in range(1, 21):
            ...                                    # your loop
            writer.save(net, width=width, epoch=epoch)
        writer.finish(width)                       # marks w<W>/done
    writer.close()                                 # marks <run>/done

The model's factory (a callable ``factory(width, num_classes, in_channels)``, a registered name
or a ``module:factory`` spec) is recorded as the checkpoints' ``arch``, so ``ckpt-analyze run``
needs no ``--model`` when the factory is importable.
"""

from __future__ import annotations

import ast
import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._atomic import atomic_write_json
from ..checkpoints import (
    CKPT_FORMAT,
    RUN_FORMAT,
    checkpoint_path,
    dataset_manifest,
    is_done,
    mark_done,
    read_run_json,
    save_labels,
    save_tensors,
    strip_prefix,
)
from ..config import settings_diff
from ..errors import CkptError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["RunWriter", "factory_spec"]

Factory = Callable[[int, int, int], "nn.Module"]


def _guarded_script(path: Path) -> bool:
    """Whether importing the script ``path`` runs nothing but definitions: its top level holds
    only imports, functions, classes, assignments, docstrings and ``if __name__ == ...``."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return False
    ok = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
          ast.Assign, ast.AnnAssign)
    for node in tree.body:
        if isinstance(node, ok):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            continue
        return False
    return True


def factory_spec(factory: Callable[..., Any]) -> tuple[str, bool]:
    """``(spec, importable)`` for a model factory callable.

    A function of an importable module gives ``"package.module:name"``; one defined in the
    script being run (``__main__``) gives ``"/abs/path/script.py:name"`` when importing that
    script defines things and runs nothing else (its work under ``if __name__ == "__main__"``).
    Otherwise the spec only describes the factory and ``importable`` is False."""
    import importlib

    module = getattr(factory, "__module__", None) or ""
    qual = getattr(factory, "__qualname__", None) or getattr(factory, "__name__", None) or ""
    spec = f"{module}:{qual}"
    if not qual or "<" in qual:  # lambdas, closures
        return spec, False
    if module == "__main__":
        try:
            file = Path(inspect.getfile(factory)).resolve()
        except (TypeError, OSError):
            return spec, False
        if file.suffix == ".py" and file.is_file() and _guarded_script(file):
            return f"{file}:{qual}", True
        return spec, False
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except Exception:
        return spec, False
    return spec, obj is factory


def _meta_value(value: Any) -> str:
    """A metric as safetensors metadata text (floats as ``repr``, like ckpt-train)."""
    import json

    try:
        import torch

        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) or (hasattr(value, "__float__") and not isinstance(value, str)):
        return repr(float(value))
    return value if isinstance(value, str) else json.dumps(value, default=str)


class RunWriter:
    """Writes a run folder of the checkpoint contract from your own training loop.

    Args:
        out: the run folder (created; re-opening a folder written with the same settings
            continues it, other settings are refused like ``ckpt-train`` does).
        model: the model factory ``factory(width, num_classes, in_channels) -> nn.Module``: a
            callable, a registered name (``mcnn``), a ``module:factory`` or ``file.py:factory``
            spec, or ``torchvision:NAME``. Recorded as ``arch``; saved state_dicts are checked
            against (and module prefixes such as Lightning's ``model.`` stripped to fit) it.
        dataset, data_root, split_seed: a registered dataset (``digits``, ``cifar10``, ``npz``
            ...) that the analyzer reloads by name; :attr:`x_train` etc. hold its data.
        widths, epochs, save: the planned grid (recorded in run.json; a :meth:`save` outside
            it is refused). ``save``: ``"every"``, ``"log:N"`` or a list of epochs.
        label_noise, noise_kind, noise_classes, seed: corrupt labels as ``ckpt-train`` does
            (:attr:`y_train` holds them); or pass ``train_labels`` you trained on (the noisy
            mask is where they differ from the dataset's labels).
        optimizer, batch_size, augment, extra: free-form descriptions stored in run.json.
        evaluate: compute ``train_loss``, ``train_error``, ``noisy_error``, ``test_loss``,
            ``test_error`` of each saved model (eval mode, as ``ckpt-train``); metrics passed to
            :meth:`save` win.
    """

    def __init__(self, out: str | Path, model: str | Factory, *, dataset: str = "digits",
                 data_root: str | Path | None = None, split_seed: int = 0,
                 widths: Sequence[int] | None = None, epochs: int | None = None,
                 save: str | Sequence[int] | None = None, label_noise: float = 0.0,
                 noise_kind: str = "symmetric", noise_classes: Sequence[int] | None = None,
                 seed: int = 0, train_labels: Any = None,
                 optimizer: Mapping[str, Any] | None = None, batch_size: int | None = None,
                 augment: bool | None = None, extra: Mapping[str, Any] | None = None,
                 evaluate: bool = True) -> None:
        import torch

        from ..data import load_dataset
        from ..data.noise import label_noise as make_noise

        self.out = Path(out)
        self.arch, self._factory = self._resolve_model(model)
        self.widths = None if widths is None else [int(w) for w in widths]
        if self.widths is not None and (not self.widths or any(w < 1 for w in self.widths)):
            raise UsageError(f"widths: must be positive integers (got {widths!r})")
        if epochs is not None and int(epochs) < 0:
            raise UsageError(f"epochs: must be >= 0 (got {epochs})")
        self.epochs = None if epochs is None else int(epochs)
        self.save_epochs = self._plan_saves(save, self.epochs)
        self.evaluate = evaluate

        data = load_dataset(dataset, data_root, split_seed)
        self.data = data
        clean = data.y_train
        if train_labels is not None:
            y = torch.as_tensor(train_labels).to(torch.int64).cpu()
            if y.shape != clean.shape:
                raise UsageError(f"train_labels: {tuple(y.shape)} labels for {data.n_train} "
                                 f"training images of '{dataset}'")
            mask = y != clean
            noise = {"kind": "given", "fraction": float(mask.float().mean()), "seed": None,
                     "classes": None}
        else:
            labels, mask_np = make_noise(clean.numpy(), data.num_classes, noise_kind, label_noise,
                                         seed, None if noise_classes is None else tuple(noise_classes))
            y = torch.as_tensor(labels, dtype=torch.int64)
            mask = torch.as_tensor(mask_np, dtype=torch.bool)
            noise = {"kind": noise_kind, "fraction": label_noise, "seed": seed,
                     "classes": None if noise_classes is None else list(noise_classes)}
        self.y_train = y
        self.noisy_mask = mask
        self.x_train = data.normalized(data.x_train)
        self.x_test = data.normalized(data.x_test)
        self.y_test = data.y_test

        self.manifest: dict[str, Any] = {
            "format": RUN_FORMAT,
            "version": __version__,
            "writer": "ckpt_analyzer.RunWriter",
            "dataset": dataset_manifest(dataset, data_root, split_seed, data),
            "label_noise": noise,
            "label_smoothing": None,
            "arch": self.arch,
            "widths": self.widths,
            "epochs": self.epochs,
            "save": None if self.save_epochs is None else {
                "spec": save if isinstance(save, str) else "every" if save is None else "list",
                "epochs": self.save_epochs},
            "optimizer": None if optimizer is None else dict(optimizer),
            "batch_size": batch_size,
            "augment": augment,
            "seed": seed,
            "time_unit": "epoch",
            "extra": None if extra is None else dict(extra),
        }
        self._open()
        self._saved: dict[int, list[int]] = {}
        self._keys: dict[int, dict[str, tuple[int, ...]]] = {}
        self._eval_model: tuple[int, nn.Module] | None = None
        self._on_device: dict[str, tuple[torch.Tensor, ...]] = {}

    # ------------------------------------------------------------ set-up
    @staticmethod
    def _resolve_model(model: str | Factory) -> tuple[str, Factory]:
        from ..models import build_model

        if isinstance(model, str):
            return model, lambda w, c, i: build_model(model, w, c, i)
        if not callable(model):
            raise UsageError(f"model: expected a factory callable or a name, got {type(model).__name__}")
        spec, importable = factory_spec(model)
        if not importable:
            warnings.warn(f"RunWriter: the model factory {spec} cannot be imported by the analyzer "
                          "(define it in a module, or guard the script's work with "
                          "'if __name__ == \"__main__\":'); 'ckpt-analyze run' will need --model",
                          stacklevel=3)
        return spec, model

    @staticmethod
    def _plan_saves(save: str | Sequence[int] | None, epochs: int | None) -> list[int] | None:
        from ..train.schedule import save_epochs

        if save is None:
            return None if epochs is None else list(range(epochs + 1))
        if epochs is None:
            raise UsageError("save: a save schedule needs epochs")
        if isinstance(save, str):
            return save_epochs(save, epochs)
        out = sorted({int(e) for e in save})
        bad = [e for e in out if e < 0 or e > epochs]
        if bad:
            raise UsageError(f"save: epoch {bad[0]} is outside 0..{epochs}")
        return out

    def _open(self) -> None:
        old = read_run_json(self.out) if self.out.is_dir() else None
        if old is not None:
            diff = settings_diff(old, self.manifest, ignore=("version",))
            if diff:
                raise CkptError("holds a run with other settings: " + "; ".join(diff)
                                + " (use another folder)", self.out / "run.json")
            return
        if self.out.exists() and not self.out.is_dir():
            raise CkptError("exists and is a file, not a run folder", self.out)
        if self.out.is_dir() and any(self.out.iterdir()):
            raise CkptError("is not empty and holds no run.json (use a new or empty folder)", self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        save_labels(self.out, self.y_train, self.data.y_train, self.noisy_mask)
        atomic_write_json(self.out / "run.json", self.manifest)  # last: the run exists now

    # ------------------------------------------------------------ facts for the loop
    @property
    def num_classes(self) -> int:
        return int(self.data.num_classes)

    @property
    def in_channels(self) -> int:
        return int(self.data.in_channels)

    @property
    def image_size(self) -> int:
        return int(self.data.image_size)

    def build_model(self, width: int) -> nn.Module:
        """A fresh model of ``width`` from the recorded factory."""
        return self._factory(int(width), self.num_classes, self.in_channels)

    # ------------------------------------------------------------ writing
    def _check_plan(self, width: int, epoch: int) -> None:
        if self.widths is not None and width not in self.widths:
            raise UsageError(f"width {width} was not planned (run.json widths: "
                             f"{', '.join(map(str, self.widths))})")
        if self.save_epochs is not None and epoch not in self.save_epochs:
            raise UsageError(f"epoch {epoch} is not in the planned save schedule "
                             f"(0..{self.epochs}, {len(self.save_epochs)} saves)")
        if is_done(self.out, width):
            raise UsageError(f"width {width} is already marked finished ({self.out}/w{width}/done)")

    def _fit(self, model: nn.Module | Mapping[str, torch.Tensor], width: int,
             path: Path) -> dict[str, torch.Tensor]:
        """The state_dict as the factory's model of ``width`` names it (prefix stripped),
        every key and shape checked."""
        state = model if isinstance(model, Mapping) else model.state_dict()
        if width not in self._keys:
            ref = self.build_model(width)
            self._keys = {width: {k: tuple(v.shape) for k, v in ref.state_dict().items()}}
        want = self._keys[width]
        fitted = strip_prefix(state, want, None, path)
        missing = [k for k in want if k not in fitted]
        if missing:
            raise UsageError(f"save(width={width}): the model does not fit factory {self.arch}: "
                             f"missing '{missing[0]}' (the state has "
                             f"{', '.join(list(fitted)[:4])}{', ...' if len(fitted) > 4 else ''})")
        for k, shape in want.items():
            if tuple(fitted[k].shape) != shape:
                raise UsageError(f"save(width={width}): '{k}' has shape {tuple(fitted[k].shape)}, "
                                 f"factory {self.arch} at width {width} wants {shape}")
        return {k: fitted[k] for k in want}

    def _metrics(self, state: Mapping[str, torch.Tensor], width: int) -> dict[str, float]:
        from ..train.loop import evaluate

        dev = next(iter(state.values())).device if state else None
        if self._eval_model is None or self._eval_model[0] != width:
            self._eval_model = (width, self.build_model(width))
        net = self._eval_model[1].to(dev)
        net.load_state_dict(dict(state), strict=True)
        key = str(dev)
        if key not in self._on_device:
            self._on_device = {key: tuple(t.to(dev) for t in (
                self.x_train, self.y_train, self.noisy_mask, self.x_test, self.y_test))}
        xtr, ytr, noisy, xte, yte = self._on_device[key]
        train_loss, train_error = evaluate(net, xtr, ytr)
        _, noisy_error = evaluate(net, xtr[noisy], ytr[noisy])
        test_loss, test_error = evaluate(net, xte, yte)
        return {"train_loss": train_loss, "train_error": train_error, "noisy_error": noisy_error,
                "test_loss": test_loss, "test_error": test_error}

    def save(self, model: nn.Module | Mapping[str, torch.Tensor], *, width: int, epoch: int,
             step: int | None = None, **metrics: Any) -> Path:
        """Write ``w<width>/e<epoch>.safetensors`` atomically and return its path.

        ``model``: the trained network (or a LightningModule / wrapper holding it, or a
        state_dict); epoch 0 is the initialization. ``step``: optimizer steps so far (-1 when
        not given). ``metrics``: numbers stored in the metadata next to the computed ones."""
        width, epoch = int(width), int(epoch)
        if width < 1 or epoch < 0:
            raise UsageError(f"save: width must be >= 1 and epoch >= 0 (got {width}, {epoch})")
        self._check_plan(width, epoch)
        path = checkpoint_path(self.out, width, epoch)
        state = self._fit(model, width, path)
        computed: dict[str, float] = {}
        if self.evaluate:
            computed = self._metrics(state, width)
        meta: dict[str, Any] = {k: repr(v) for k, v in computed.items()}
        meta.update({k: _meta_value(v) for k, v in metrics.items()})
        for k in ("train_loss", "train_error"):
            meta.setdefault(k, repr(math.nan))
        meta.update({
            "format": CKPT_FORMAT, "arch": self.arch, "width": width, "epoch": epoch,
            "step": -1 if step is None else int(step), "num_classes": self.num_classes,
            "in_channels": self.in_channels, "image_size": self.image_size,
        })
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path, state, meta)
        saved = self._saved.setdefault(width, [])
        if epoch not in saved:
            saved.append(epoch)
        return path

    def finish(self, width: int) -> None:
        """Mark ``width`` finished: writes ``w<width>/done`` (after its last checkpoint)."""
        width = int(width)
        if self.widths is not None and width not in self.widths:
            raise UsageError(f"width {width} was not planned (run.json widths: "
                             f"{', '.join(map(str, self.widths))})")
        on_disk = sorted(int(p.stem[1:]) for p in (self.out / f"w{width}").glob("e*.safetensors"))
        mark_done(self.out, width, epochs=on_disk)

    def close(self) -> None:
        """Mark the run finished (``<run>/done``) once every planned width is; without planned
        widths, the widths saved so far are marked and the run with them."""
        widths = self.widths if self.widths is not None else sorted(self._saved)
        if self.widths is None:
            for w in widths:
                if not is_done(self.out, w):
                    self.finish(w)
        if all(is_done(self.out, w) for w in widths):
            mark_done(self.out, widths=list(widths))

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
