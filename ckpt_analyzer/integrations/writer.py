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
or a ``module:factory`` spec) is recorded as the checkpoints' ``arch`` by name, never by an
absolute path (:func:`factory_spec`): a registered factory by its registered name, a module's
function as ``module:function``, a function of the script being run as its path relative to the
working directory (``train.py:make``). ``ckpt-analyze run`` builds a registered name by itself;
any other factory is code that a reader runs only when they ask (``--model SPEC`` or
``--trust-code``), and the writer warns with that command line.

Each checkpoint is written by :func:`~ckpt_analyzer.checkpoints.write.write_checkpoint` (the
same function ``ckpt-train`` uses), its loss and error evaluated by
:func:`~ckpt_analyzer.functional.loss_error.checkpoint_metrics`.

One writer per folder: the writer holds ``<run>/.writer.lock`` from its creation until
:meth:`RunWriter.close` (a second live writer is refused naming the holder); in a distributed
job only rank 0 (``RANK``/``LOCAL_RANK``/``SLURM_PROCID`` unset or 0) creates and locks it.
"""

from __future__ import annotations

import ast
import inspect
import operator
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..checkpoints.files import RUN_FORMAT, strip_prefix
from ..checkpoints.layout import (
    checkpoint_epochs,
    checkpoint_path,
    done_path,
    run_json_path,
    width_dir,
)
from ..checkpoints.lock import RunLock, create_run_json, only_start_files, remove_stale_start_files
from ..checkpoints.run_folder import (
    dataset_manifest,
    is_done,
    mark_done,
    read_run_json,
    save_labels,
)
from ..checkpoints.schedule import save_epochs
from ..checkpoints.write import write_checkpoint
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


def _main_spec(factory: Callable[..., Any], qual: str) -> tuple[str, bool] | None:
    """The name of a factory defined in ``__main__`` (see :func:`factory_spec`), or None when
    its script cannot be told or does more than define things when imported."""
    import sys

    try:
        file = Path(inspect.getfile(factory)).resolve()
    except (TypeError, OSError):
        return None
    if file.suffix != ".py" or not file.is_file() or not _guarded_script(file):
        return None
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(main_spec, "name", None)
    if name and name != "__main__" and Path(str(getattr(main_spec, "origin", ""))).resolve() == file:
        return f"{name}:{qual}", True  # python -m package.module: a module name
    try:
        where = Path(os.path.relpath(file, Path.cwd())).as_posix()
    except ValueError:  # another drive (Windows): the file name alone
        where = file.name
    return f"{where}:{qual}", True


def factory_spec(factory: Callable[..., Any]) -> tuple[str, bool]:
    """``(spec, importable)`` for a model factory callable: a name, never an absolute path.

    A function of an importable module gives ``"package.module:name"``. One defined in the
    script being run (``__main__``) gives, when importing that script defines things and runs
    nothing else (its work under ``if __name__ == "__main__"``), ``"package.module:name"`` for
    a script run as ``python -m package.module``, else the script's path *relative to the
    working directory* (``"train.py:make"``, ``"scripts/train.py:make"``): the directory from
    which ``--model SPEC`` or ``--trust-code`` finds it again, as a ``file.py:factory`` spec
    is resolved (:func:`~ckpt_analyzer.models.load_factory`). Either is code that a reader
    runs only when they ask (:func:`~ckpt_analyzer.models.file_arch`). Otherwise (lambdas,
    closures, unguarded scripts) the spec only describes the factory and ``importable`` is
    False."""
    import importlib

    module = getattr(factory, "__module__", None) or ""
    qual = getattr(factory, "__qualname__", None) or getattr(factory, "__name__", None) or ""
    spec = f"{module}:{qual}"
    if not qual or "<" in qual:  # lambdas, closures
        return spec, False
    if module == "__main__":
        return _main_spec(factory, qual) or (spec, False)
    try:
        obj: Any = importlib.import_module(module)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except Exception:
        return spec, False
    return spec, obj is factory


def _int_arg(what: str, value: Any, low: int) -> int:
    """``value`` as an int >= ``low``; a one-line UsageError naming ``what`` for floats (never
    truncated), bools, strings and values below ``low``."""
    if isinstance(value, bool):
        raise UsageError(f"{what}: must be an integer >= {low} (got the bool {value!r})")
    try:
        out = operator.index(value)
    except TypeError:
        raise UsageError(f"{what}: must be an integer >= {low} (got {type(value).__name__} "
                         f"{value!r})"[:200]) from None
    if out < low:
        raise UsageError(f"{what}: must be an integer >= {low} (got {out})")
    return out


def _int_list(what: str, values: Any, low: int, unique: bool = True) -> list[int]:
    """A list argument of ints (``widths=``, ``save=``), each checked by :func:`_int_arg`;
    ``unique``: a value given twice is refused."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise UsageError(f"{what}: must be a list of integers (got {type(values).__name__} "
                         f"{values!r})"[:200])
    out = [_int_arg(f"{what}[{i}]", v, low) for i, v in enumerate(values)]
    if not out:
        raise UsageError(f"{what}: must not be empty")
    dup = next((v for v in out if out.count(v) > 1), None) if unique else None
    if dup is not None:
        raise UsageError(f"{what}: {dup} is given twice")
    return out


def _epochs_text(epochs: Sequence[int]) -> str:
    shown = ", ".join(map(str, epochs[:8]))
    return shown + (f" (+{len(epochs) - 8} more)" if len(epochs) > 8 else "")


def _process_rank() -> int:
    """This process's rank in a distributed job (0 outside one), read as Lightning does."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _registered_name(factory: Callable[..., Any]) -> str | None:
    """The registered architecture name whose factory is ``factory`` (None if none is)."""
    from ..errors import CkptError
    from ..models import MODELS

    for name in MODELS.names():
        try:
            if MODELS.get(name) is factory:
                return name
        except CkptError:  # pragma: no cover - names() lists only loadable ones
            continue
    return None


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
        self._lock: RunLock | None = None
        self._closed = False
        self.widths = None if widths is None else _int_list("widths", widths, 1)
        self.epochs = None if epochs is None else _int_arg("epochs", epochs, 0)
        self.save_epochs = self._plan_saves(save, self.epochs)
        split_seed = _int_arg("split_seed", split_seed, 0)
        seed = _int_arg("seed", seed, 0)
        if batch_size is not None:
            batch_size = _int_arg("batch_size", batch_size, 1)
        if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)):
            raise UsageError(f"label_noise: must be a number in [0, 1) (got {label_noise!r})")
        if noise_classes is not None:
            noise_classes = _int_list("noise_classes", noise_classes, 0)
        self.arch, self._factory = self._resolve_model(model, self.out)
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
    def _resolve_model(model: str | Factory, out: Path) -> tuple[str, Factory]:
        import shlex

        from ..models import build_model, is_registered

        if isinstance(model, str):
            spec, importable = model, True
            factory: Factory = lambda w, c, i: build_model(model, w, c, i)
        elif callable(model):
            (spec, importable), factory = factory_spec(model), model
            named = _registered_name(model)
            if named is not None:  # a registered architecture's own factory: its name
                spec, importable = named, True
        else:
            raise UsageError(f"model: expected a factory callable or a name, got {type(model).__name__}")
        if not importable:
            warnings.warn(f"RunWriter: the model factory {spec} cannot be imported by the analyzer "
                          "(define it in a module, or guard the script's work with "
                          "'if __name__ == \"__main__\":'); 'ckpt-analyze run' will need "
                          "--model MODULE:FACTORY", stacklevel=3)
        elif not is_registered(spec):
            here = " from this directory" if spec.rpartition(":")[0].endswith(".py") else ""
            warnings.warn(f"RunWriter: the model factory {spec} is code, not a registered "
                          "architecture; the analyzer runs it only when asked: ckpt-analyze run "
                          f"{shlex.quote(str(out))} --model {shlex.quote(spec)} (or --trust-code)"
                          + here, stacklevel=3)
        return spec, factory

    @staticmethod
    def _plan_saves(save: str | Sequence[int] | None, epochs: int | None) -> list[int] | None:
        if save is None:
            return None if epochs is None else list(range(epochs + 1))
        if epochs is None:
            raise UsageError("save: a save schedule needs epochs")
        if isinstance(save, str):
            return save_epochs(save, epochs)
        out = sorted(set(_int_list("save", save, 0, unique=False)))
        bad = [e for e in out if e > epochs]
        if bad:
            raise UsageError(f"save: epoch {bad[0]} is outside 0..{epochs}")
        return out

    def _open(self) -> None:
        """Check (to continue) or create the run folder, holding its writer lock. A folder
        holding only what a writer killed while creating it left is reused."""
        if self.out.exists() and not self.out.is_dir():
            raise CkptError("exists and is a file, not a run folder", self.out)
        if _process_rank() != 0:  # another rank of a distributed job: rank 0 owns the folder
            old = read_run_json(self.out) if self.out.is_dir() else None
            if old is not None:
                self._check_same(old)
            return
        if (self.out.is_dir() and not run_json_path(self.out).exists()
                and not only_start_files(self.out)  # before the lock file is added to it
                and not run_json_path(self.out).exists()):  # (or a starting writer's run.json)
            raise CkptError("is not empty and holds no run.json (use a new or empty folder)", self.out)
        self._lock = RunLock(self.out, "RunWriter").acquire()
        try:
            old = read_run_json(self.out)
            if old is not None:
                self._check_same(old)
                return
            if not only_start_files(self.out):
                raise CkptError("is not empty and holds no run.json (use a new or empty "
                                "folder)", self.out)
            remove_stale_start_files(self.out)  # left by a writer killed while starting
            save_labels(self.out, self.y_train, self.data.y_train, self.noisy_mask)
            create_run_json(self.out, self.manifest)  # last, exclusively: the run exists now
        except BaseException:
            self._release()
            raise

    def _check_same(self, old: Mapping[str, Any]) -> None:
        diff = settings_diff(old, self.manifest, ignore=("version",))
        if diff:
            raise CkptError("holds a run with other settings: " + "; ".join(diff)
                            + " (use another folder)", run_json_path(self.out))

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise UsageError(f"{what}: this RunWriter of {self.out} is closed (open a new one "
                             "to continue the run)")

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
            raise UsageError(f"width {width} is already marked finished ({done_path(self.out, width)})")

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
        from ..functional.loss_error import checkpoint_metrics

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
        return checkpoint_metrics(net, xtr, ytr, noisy, xte, yte)

    def save(self, model: nn.Module | Mapping[str, torch.Tensor], *, width: int, epoch: int,
             step: int | None = None, **metrics: Any) -> Path:
        """Write ``w<width>/e<epoch>.safetensors`` atomically and return its path.

        ``model``: the trained network (or a LightningModule / wrapper holding it, or a
        state_dict); epoch 0 is the initialization. ``step``: optimizer steps so far (-1 when
        not given). ``metrics``: numbers stored in the metadata next to the computed ones."""
        self._check_open("save")
        width = _int_arg("save(width=)", width, 1)
        epoch = _int_arg("save(epoch=)", epoch, 0)
        if step is not None:
            step = _int_arg("save(step=)", step, 0)
        self._check_plan(width, epoch)
        state = self._fit(model, width, checkpoint_path(self.out, width, epoch))
        path = write_checkpoint(
            self.out, state, arch=self.arch, width=width, epoch=epoch,
            step=-1 if step is None else int(step), num_classes=self.num_classes,
            in_channels=self.in_channels, image_size=self.image_size,
            metrics=self._metrics(state, width) if self.evaluate else None,
            extra={k: _meta_value(v) for k, v in metrics.items()})
        saved = self._saved.setdefault(width, [])
        if epoch not in saved:
            saved.append(epoch)
        return path

    def missing(self, width: int) -> list[int]:
        """Planned save epochs of ``width`` without a checkpoint on disk ([] without a plan)."""
        if self.save_epochs is None:
            return []
        on_disk = set(checkpoint_epochs(self.out, width))
        return [e for e in self.save_epochs if e not in on_disk]

    def finish(self, width: int) -> None:
        """Mark ``width`` finished: writes ``w<width>/done`` (after its last checkpoint).

        With a planned save schedule, every planned epoch must be on disk: otherwise a
        one-line CkptError names the width and the missing epochs, and no marker is written
        (a marker is a claim that the width is complete; ``--follow`` trusts it)."""
        self._check_open("finish")
        width = _int_arg("finish(width)", width, 1)
        if self.widths is not None and width not in self.widths:
            raise UsageError(f"width {width} was not planned (run.json widths: "
                             f"{', '.join(map(str, self.widths))})")
        missing = self.missing(width)
        if missing:
            raise CkptError(f"finish(width={width}): planned checkpoint(s) of epoch "
                            f"{_epochs_text(missing)} missing; width {width} not marked done",
                            width_dir(self.out, width))
        mark_done(self.out, width, epochs=checkpoint_epochs(self.out, width))

    def close(self) -> None:
        """Mark the run finished (``<run>/done``) once every planned width is; without planned
        widths, the widths saved so far are marked and the run with them. A run with planned
        checkpoints missing is not marked done: a warning names the widths and epochs. Releases
        the folder's writer lock; the writer cannot save after this."""
        if self._closed:
            return
        try:
            if _process_rank() != 0:
                return  # rank 0 marks the run
            widths = self.widths if self.widths is not None else sorted(self._saved)
            gaps = []
            for w in widths:
                missing = self.missing(w)
                if missing:
                    gaps.append(f"width {w}: epoch {_epochs_text(missing)}")
                elif self.widths is None and not is_done(self.out, w):
                    self.finish(w)
                elif not is_done(self.out, w):
                    gaps.append(f"width {w}: not marked finished (finish({w}))")
            if gaps:
                warnings.warn(f"RunWriter: {self.out} not marked done, planned checkpoints "
                              f"missing: {'; '.join(gaps)}", stacklevel=2)
            else:
                mark_done(self.out, widths=list(widths))
        finally:
            self._closed = True
            self._release()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:  # the loop failed: nothing is marked, the next writer may continue the run
            self._closed = True
            self._release()
