"""ckpt-analyzer: what networks learned over training, checkpoint by checkpoint.

Notebook API (the README's Python API): :func:`load_model`, :func:`load_subset`, :func:`open_cube`,
:func:`to_dataframe` (pandas), and the
probes' maths under :mod:`ckpt_analyzer.functional`; :class:`RunWriter` writes the checkpoint
contract from your own training loop. Importing the package is cheap: torch and
h5py are imported only when these are called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["RunWriter", "__version__", "load_model", "load_subset", "open_cube", "to_dataframe"]

if TYPE_CHECKING:
    import pandas
    import torch
    import xarray

    from .integrations.writer import RunWriter


def load_model(path: str, device: str = "cpu", model: str | None = None,
               pattern: str | None = None, num_classes: int | None = None,
               in_channels: int | None = None, width: int | None = None,
               prefix: str | None = None, trust_code: bool = False) -> torch.nn.Module:
    """The checkpoint's model with its weights, in eval mode, on ``device``.

    The metadata's ``arch`` is built only when it is a registered name (or ``torchvision:`` /
    ``timm:``); one naming code (``file.py:factory``, ``module:factory``) is refused unless you
    pass that spec as ``model=`` or ``trust_code=True``.

    Foreign checkpoints (no ckpt-analyzer metadata) need ``model='module:factory'`` and
    ``pattern`` (to read the width from the path) or ``width``, ``num_classes`` and
    ``in_channels``; a module prefix of the keys (Lightning's ``model.``) is found and removed,
    or named with ``prefix``."""
    from .checkpoints import load_model as _load

    return _load(path, device=device, model=model, pattern=pattern, num_classes=num_classes,
                 in_channels=in_channels, width=width, prefix=prefix, trust_code=trust_code)


def load_subset(run_dir: str, subset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of ``train``/``clean``/``noisy``/``test``: normalized inputs and labels."""
    from .checkpoints import load_subset as _load

    return _load(run_dir, subset)


def open_cube(path: str, probe: str, lazy: bool | None = None) -> xarray.Dataset:
    """The probe's group of a cube as a labeled :class:`xarray.Dataset`: in memory, or read
    as indexed when ``lazy`` (default: when its metrics exceed 256 MiB)."""
    from .cube import open_cube as _open

    return _open(path, probe, lazy)


def to_dataframe(cube: str, probe: str | list[str] | None = None, *, layers: bool = False,
                 width: int | None = None, epoch: int | None = None) -> pandas.DataFrame:
    """The cube as a tidy :class:`pandas.DataFrame`: one row per value of a measured cell,
    columns ``run, width, epoch`` (``step`` for a cube on steps) ``, probe, metric``, one per
    coordinate (``subset``, ``k``, ``layer`` …) and ``value``; only ``probe`` (a name or a
    list) if given.

    ``layers=True``: the per-layer table of ``ckpt-analyze report --layers`` instead, indexed
    by layer (module name), one column per ``probe/metric`` at ``width`` (default the largest)
    and ``epoch`` (default the last measured)."""
    if layers:
        if probe is not None:
            from .errors import UsageError

            raise UsageError("to_dataframe: layers=True shows every per-layer probe; select "
                             "columns of the result instead of passing probe")
        from .report.layers import layer_dataframe

        return layer_dataframe(cube, width, epoch)
    if width is not None or epoch is not None:
        from .errors import UsageError

        raise UsageError("to_dataframe: width and epoch select the layers=True table; filter "
                         "the tidy table's columns instead")
    from .export.tidy import to_dataframe as _tidy

    return _tidy(cube, probe)


def __getattr__(name: str) -> Any:
    if name == "RunWriter":
        from .integrations.writer import RunWriter

        return RunWriter
    if name == "functional":
        import importlib

        return importlib.import_module(".functional", __name__)
    raise AttributeError(name)
