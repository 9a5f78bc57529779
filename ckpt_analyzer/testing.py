"""The probe contract as a test, for plugin authors: ``check_probe(MyProbe)``.

Runs the checks the built-in probes pass (docs/probes.md) on small real data: scikit-learn's
digits with 20% of the training labels corrupted, and untrained ``mcnn`` models of widths 1 and
2 (or the last checkpoints of a run folder you pass). Raises ``AssertionError`` naming the probe
and what failed::

    from ckpt_analyzer.testing import check_probe
    from my_plugin import MyProbe

    def test_my_probe_meets_the_contract():
        check_probe(MyProbe, MyProbe.Config(points=16))
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CkptError
from .probes import check_probe_class
from .probes.base import Context, Probe
from .schema import Outputs

__all__ = ["check_probe", "contract_context"]


def contract_context(run_dir: str | Path | None = None, seed: int = 0, batch_size: int = 97,
                     device: str | Any = "cpu", *, trust_code: bool = False
                     ) -> tuple[Context, dict[int, tuple[Any, Any]]]:
    """A :class:`Context` on ``device`` and ``{width: (model, checkpoint ref)}`` to measure:
    the last checkpoint of each width of ``run_dir``, or (without one) digits with 20%
    symmetric label noise and untrained ``mcnn`` models of widths 1 and 2 (seeded). The
    models and data are the same on every device (built on the CPU, then moved). The
    context is built by the runner's own :meth:`~ckpt_analyzer.probes.plan.Plan.context`:
    its ``initial_state`` / ``final_state`` give each width's epoch-0 / last checkpoint, as in
    ``ckpt-analyze run`` (without a run: the untrained models, their own last checkpoint at
    epoch 1, kept in a temporary folder). A run.json ``arch`` naming code
    (``file.py:factory``) is refused unless ``trust_code``."""
    import torch

    from .checkpoints import CheckpointRef, discover, load_state_into, read_run_json, read_state_dict
    from .checkpoints.run_data import RunData, load_run_data
    from .models import build_model
    from .probes.plan import Plan

    dev = torch.device(device)
    if run_dir is not None:
        data = load_run_data(run_dir, dev)
        refs = discover(run_dir)
        widths = tuple(sorted({r.width for r in refs}))
        last = {w: max((r for r in refs if r.width == w), key=lambda r: r.epoch) for w in widths}
        arch = _arch(run_dir, trust_code)
        epochs = tuple(sorted({r.epoch for r in refs}))
        run = read_run_json(run_dir) or {}
        initial = {r.width: r.path for r in refs if r.epoch == 0}
        final = {w: (r.epoch, r.path, r.error) for w, r in last.items()}
        root = str(run_dir)
    else:
        from .data import normalize
        from .data.digits import load_digits
        from .data.noise import label_noise

        digits = load_digits(None, 0)
        noisy_y, noisy = label_noise(digits.y_train.numpy(), 10, "symmetric", 0.2, seed)
        y, mask = torch.from_numpy(noisy_y), torch.from_numpy(noisy)
        mean = torch.tensor(digits.mean)
        std = torch.tensor(digits.std)
        norm = lambda x: normalize(x, mean, std)
        data = RunData(x_train=norm(digits.x_train), y_train=y, clean_labels=digits.y_train,
                       noisy_mask=mask, x_test=norm(digits.x_test), y_test=digits.y_test,
                       mean=mean, std=std, num_classes=10).to(dev)
        widths, epochs, arch, run = (1, 2), (0, 1), "mcnn", {}
        root = _untrained_folder(widths)
        initial = {w: f"{root}/w{w}.safetensors" for w in widths}
        final = {w: (1, p, None) for w, p in initial.items()}
        last = {w: CheckpointRef(width=w, epoch=1, path=initial[w]) for w in widths}
    meta = {"arch": arch, "num_classes": data.num_classes, "in_channels": int(data.x_train.shape[1])}
    plan = Plan(run_dir=root, batch_size=batch_size, seed=seed, run=run, widths=widths,
                epochs=epochs, width_meta={w: meta for w in widths}, initial=initial,
                final=final, model=arch)
    models = {}
    for w, ref in last.items():
        m = build_model(arch, w, data.num_classes, int(data.x_train.shape[1])).to(dev).eval()
        load_state_into(m, read_state_dict(ref.path, dev), ref.path)
        models[w] = (m, ref if run_dir is not None else CheckpointRef(
            width=w, epoch=1, path="<untrained mcnn>"))
    return plan.context(data, dev), models


_UNTRAINED: dict[tuple[int, ...], str] = {}


def _untrained_folder(widths: tuple[int, ...]) -> str:
    """A temporary folder (removed at exit) with seeded untrained ``mcnn`` models, one file per
    width, written once per process."""
    if widths not in _UNTRAINED:
        import atexit
        import shutil
        import tempfile

        import torch
        from safetensors.torch import save_file

        from .models import build_model

        root = tempfile.mkdtemp(prefix="ckpt-contract-")
        atexit.register(shutil.rmtree, root, True)
        for w in widths:
            torch.manual_seed(1000 + w)
            state = build_model("mcnn", w, 10, 1).state_dict()
            save_file({k: v.contiguous() for k, v in state.items()}, f"{root}/w{w}.safetensors")
        _UNTRAINED[widths] = root
    return _UNTRAINED[widths]


def _arch(run_dir: str | Path, trust_code: bool = False) -> str:
    from .checkpoints import read_run_json
    from .models import file_arch

    run = read_run_json(run_dir) or {}
    return file_arch(run.get("arch", "mcnn"), Path(run_dir) / "run.json", trust_code)


def check_probe(cls: type[Probe[Any]], config: Any = None, run_dir: str | Path | None = None,
                *, every_metric_finite: bool | None = None, device: str | Any = "cpu",
                trust_code: bool = False) -> None:
    """Assert that ``cls`` meets the probe contract (docs/probes.md); ``config`` defaults to
    ``cls.Config()``. Checked: the class (name, version, description, frozen ``Config`` whose
    fields have defaults and help), registration rules, declared outputs (float metrics on
    declared coordinates), results shaped as declared, determinism given the seed (fixed inputs
    and results), other seeds drawing other inputs, the model left untouched (weights, buffers,
    no ``.grad``), pickling after ``prepare`` (as executors do) with the same results, and
    finite values: in every metric with ``run_dir`` (trained models), somewhere without.
    Everything runs on ``device`` (e.g. ``"cuda"``: the same checks, GPU kernels).
    ``trust_code``: build a run.json ``arch`` that names code (see :func:`contract_context`)."""
    import torch

    name = getattr(cls, "name", "?")

    def fail(msg: str) -> AssertionError:
        return AssertionError(f"probe '{name}': {msg}")

    problem = check_probe_class(name, cls)
    if problem:
        raise fail(problem)
    if not isinstance(cls.version, str) or not cls.description:
        raise fail("needs a str version and a description")
    for f in dataclasses.fields(cls.Config):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise fail(f"Config.{f.name} has no default")
        if not f.metadata.get("help"):
            raise fail(f"Config.{f.name} has no help (field(metadata={{'help': ...}}))")
    cfg = config if config is not None else cls.Config()
    ctx, models = contract_context(run_dir, device=device, trust_code=trust_code)

    def once(c: Context) -> tuple[Probe[Any], dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
        probe = cls(cfg)
        inputs = {k: np.asarray(v) for k, v in probe.prepare(c).items()}
        outs = probe.outputs()
        if not isinstance(outs, Outputs):
            raise fail(f"outputs() returned {type(outs).__name__}, not Outputs")
        try:
            outs.declare(name)  # the cube's rules (ckpt_analyzer.schema.Decl)
        except CkptError as exc:  # one line that names the probe
            raise AssertionError(str(exc)) from None
        results = {}
        for w, (model, ref) in models.items():
            before = {k: v.detach().clone() for k, v in model.state_dict().items()}
            res = probe.measure(model, c.with_checkpoint(ref))
            after = model.state_dict()
            changed = [k for k in before if not torch.equal(before[k], after[k])]
            if changed:
                raise fail(f"changed the model's {changed[0]}")
            if any(p.grad is not None for p in model.parameters()):
                raise fail("left .grad set on the model's parameters")
            results[w] = res
        return probe, inputs, results

    probe, inputs_a, res_a = once(ctx)
    _, inputs_b, res_b = once(ctx)
    if inputs_a.keys() != inputs_b.keys() or any(
            not np.array_equal(inputs_a[k], inputs_b[k]) for k in inputs_a):
        raise fail("prepare() is not deterministic given the seed")
    for w in res_a:
        for m in res_a[w]:
            if not np.array_equal(res_a[w][m], res_b[w][m], equal_nan=True):
                raise fail(f"metric '{m}' differs between two runs with the same seed")
    strict = run_dir is not None if every_metric_finite is None else every_metric_finite
    finite = {m: any(np.isfinite(r[m]).any() for r in res_a.values()) for m in next(iter(res_a.values()))}
    if strict and not all(finite.values()):
        raise fail(f"metric(s) {[m for m, ok in finite.items() if not ok]} are NaN everywhere")
    if not any(finite.values()):
        raise fail("every metric is NaN everywhere")
    random_keys = [k for k in inputs_a if inputs_a[k].dtype.kind == "f" or k.endswith("index")]
    if random_keys:
        other = cls(cfg).prepare(dataclasses.replace(ctx, seed=ctx.seed + 1))
        if all(np.array_equal(inputs_a[k], np.asarray(other[k])) for k in random_keys):
            raise fail("another seed draws the same fixed inputs")
    clone = pickle.loads(pickle.dumps(probe))
    w = next(iter(models))
    model, ref = models[w]
    again = clone.measure(model, ctx.with_checkpoint(ref))
    for m, v in res_a[w].items():
        if not np.array_equal(v, again[m], equal_nan=True):
            raise fail(f"after pickling, metric '{m}' differs (executors pickle prepared probes)")

