"""The ``sharpness`` probe: loss sharpness in input space over SVD-erasure volumes.

Gamba et al. (TMLR 2023), §3, eq. (1)-(7), with the defaults of the authors' code (docs/probes.md);
the maths is in :mod:`ckpt_analyzer.functional.sharpness`.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..config import ConfigError, check, check_choices, check_count
from ..errors import ProbeError
from .base import Context, Metric, Outputs, Probe

if TYPE_CHECKING:
    import torch
    from torch import nn

SHARPNESS_SUBSETS = ("clean", "noisy", "train")
#: Image side for which ``svd_path`` and the path offsets are given (the authors' CIFAR-10).
REFERENCE_SIDE = 32


@dataclass(frozen=True)
class SharpnessConfig:
    samples: int = field(default=1024, metadata={
        "help": "training points, stratified over clean/noisy (all of them if fewer)"})
    paths: int = field(default=8, metadata={
        "help": "SVD-erasure paths per point (P, at most 32); paths whose windows collapse "
                "onto another's on small images are dropped"})
    svd_path: tuple[int, ...] = field(default=(5, 10, 15, 20, 22, 25), metadata={
        "help": "singular values erased at each anchor, for 32-pixel images (the whole window "
                "is scaled to the image rank otherwise)"})
    jitters: int = field(default=4, metadata={
        "help": "colour jitters per anchor for the tangent Hessian (M)"})
    jitter_strength: float = field(default=0.01, metadata={
        "help": "brightness = contrast = saturation strength of the jitters"})
    delta: float = field(default=0.1, metadata={"help": "finite-difference step of eq. 5"})
    hessian: bool = field(default=True, metadata={
        "help": "compute the tangent Hessian (off: Jacobian only, hessian is NaN)"})
    subsets: tuple[str, ...] = field(default=SHARPNESS_SUBSETS, metadata={
        "help": "subsets of the sampled points: clean, noisy, train"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "svd_path", tuple(self.svd_path))
        object.__setattr__(self, "subsets", tuple(self.subsets))
        check(self.samples >= 1, f"sharpness.samples must be >= 1 (got {self.samples})")
        check(1 <= self.paths <= REFERENCE_SIDE,
              f"sharpness.paths must be in [1, {REFERENCE_SIDE}] (got {self.paths})")
        s = list(self.svd_path)
        check(len(s) >= 1 and s[0] >= 1 and all(b > a for a, b in itertools.pairwise(s)),
              f"sharpness.svd_path must be strictly increasing integers >= 1 (got {s})")
        check(self.jitters >= (1 if self.hessian else 0),
              f"sharpness.jitters must be >= 1 when hessian is on (got {self.jitters})")
        check_count(self.jitters, "sharpness.jitters", low=0)
        check(math.isfinite(self.jitter_strength) and 0 <= self.jitter_strength <= 1,
              f"sharpness.jitter_strength must be in [0, 1] (got {self.jitter_strength})")
        check(math.isfinite(self.delta) and self.delta > 0,
              f"sharpness.delta must be > 0 (got {self.delta})")
        check_choices(self.subsets, SHARPNESS_SUBSETS, "sharpness.subsets")


@dataclass
class _DeviceState:
    """Per-device tensors derived from the fixed inputs (rebuilt after unpickling)."""

    device: torch.device
    x: torch.Tensor  # (N, C, H, W) normalized points
    y: torch.Tensor  # (N,) trained labels
    noisy: torch.Tensor  # (N,) bool
    mean: torch.Tensor  # (1, C, 1, 1) pixel mean
    std: torch.Tensor  # (1, C, 1, 1) pixel std
    factors: torch.Tensor  # (N, M, 3) jitter factors
    orders: torch.Tensor  # (N, M, 3) jitter op orders
    windows: torch.Tensor  # (P', K, 2) erased singular value windows [start, stop)
    seg: torch.Tensor  # (N, P, K) segment lengths in normalized input space
    cache: torch.Tensor | None  # (E, C, H, W) every evaluation, or None: rebuilt per block


class SharpnessProbe(Probe):
    """Input-space sharpness of the training loss over data-driven volumes (Gamba et al.).

    ``samples`` training points are drawn once per run, stratified over clean and noisy points
    (proportionally, at least one noisy point when the run has label noise). For each point x
    (label y = the label trained on) and each of P paths, K anchors are independent SVD
    erasures of x, clamped to [0, 1]. At the point and at every anchor a: accuracy and
    cross-entropy, ``J = ‖∇ₓ loss‖₂`` and ``H = sqrt(mean_m ‖(∇ₓ loss(a) − ∇ₓ loss(a_m)) / δ‖²)``
    with M weak colour jitters a_m of a (drawn once per point, shared by its anchors; applied
    in [0,1] pixel space as torchvision's, whose blends clamp). Volume v integrates each metric
    along the path up to anchor v (trapezoid rule over L2 segment lengths in normalized input
    space, divided by the length), averaged over paths and then over the points of each
    subset; v = 0 is the value at the point.

    Defaults and why:

    * Erasure windows. The authors erase, on 32×32 images, the singular values
      ``[32 − s − p, 32 − p)`` for path p = 0..7 at strength s in ``svd_path`` =
      [5,10,15,20,22,25]; only path 7 at strength 25 reaches the top singular value (1 of 48
      anchors). On an image of rank r the *whole* window (strength and path offset) is scaled:
      both ends are mapped with ``ceil(i·r/32)`` (:func:`~ckpt_analyzer.functional.sharpness.
      erasure_windows`), so an anchor erases the top singular value exactly when the authors'
      does, and paths whose windows collapse onto an earlier path's are dropped. On 32×32
      images the windows are the authors'. (Scaling the strengths alone, as version 1 did,
      made 26 of 48 anchors erase the top singular value on 8×8 digits, half of them at
      ‖a − x‖/‖x‖ ≈ 1.) A config whose share of such anchors exceeds the authors' 1/48 gets a
      warning.
    * Valid anchors. An erased image has pixels outside [0, 1] (about 23% below 0 on digits); the
      jitter's blends clamp, so on unclamped anchors ``a_m − a`` was mostly the clamp (median
      0.16 against 0.02 of jitter). Anchors are therefore clamped to [0, 1] before anything is
      evaluated at them: ``a_m − a`` is the jitter alone, and the anchors the model sees are
      images.

    Every (point, anchor, jitter) evaluation forms one flattened stream computed in chunks of
    ``ctx.batch_size``. The stream is built once per run and kept on the device when it fits
    in ``cache_bytes``; otherwise it is rebuilt deterministically per chunk of points.

    Fixed inputs (``sharpness/inputs/``): ``index`` (positions in the training split),
    ``windows`` (P', K, 2: the erased ``[start, stop)`` per kept path and anchor), ``paths``
    (P': the authors' path index of each kept path), ``distance`` (N, P', K: each anchor's
    ``‖a − x‖/‖x‖`` in [0, 1] pixel space, rounded to 1e-6) and, with ``hessian`` on,
    ``jitter_factors`` (N, M, 3: brightness, contrast, saturation) and ``jitter_order``
    (N, M, 3: op ids 0, 1, 2 in the order applied). An empty subset (``noisy`` without label
    noise) gives NaN rows.
    """

    name = "sharpness"
    version = "2"  # 2: erasure windows scaled to the image rank, anchors clamped to [0, 1]
    description = ("input-space Jacobian and tangent-Hessian norms of the loss over SVD-erasure "
                   "volumes (Gamba et al.)")
    Config = SharpnessConfig
    #: Keep the precomputed evaluation stream on the device up to this many bytes.
    cache_bytes: ClassVar[int] = 2 << 30
    #: Working memory for building the stream by blocks of points.
    block_bytes: ClassVar[int] = 64 << 20

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)

    # ------------------------------------------------------------------ declaration

    def outputs(self) -> Outputs:
        dims = ("subset", "volume")
        return Outputs(
            coords={"subset": list(self.config.subsets),
                    "volume": list(range(len(self.config.svd_path) + 1))},
            metrics={
                "accuracy": Metric(dims=dims, description="accuracy w.r.t. the trained label, "
                                   "integrated over volumes (eq. 6-7)"),
                "loss": Metric(dims=dims, description="cross-entropy with the trained label, "
                               "integrated over volumes (eq. 6-7)"),
                "jacobian": Metric(dims=dims, description="input Jacobian norm of the loss "
                                   "(eq. 2) integrated over volumes"),
                "hessian": Metric(dims=dims, description="tangent Hessian norm of the loss "
                                  "(eq. 5) integrated over volumes; NaN with hessian=false"),
            },
        )

    # ------------------------------------------------------------------ fixed inputs

    def _windows(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        """The erased windows scaled to the image rank, and the authors' ids of kept paths."""
        from ..functional.sharpness import AUTHORS_TOP_SHARE, erasure_windows, top_share

        cfg = self.config
        rank = min(ctx.data.x_train.shape[-2:])
        try:
            windows, ids = erasure_windows(cfg.svd_path, cfg.paths, rank, REFERENCE_SIDE)
        except ValueError as exc:
            raise ConfigError(f"sharpness.svd_path: {exc}") from None
        # over the configured P x K anchors: a dropped path counts as the copy it was
        configured = cfg.paths * len(cfg.svd_path)
        if top_share(windows, configured) > AUTHORS_TOP_SHARE + 1e-12:
            hits = int((windows[..., 0] == 0).sum())
            warnings.warn(f"sharpness: {hits} of {configured} anchors "
                          f"erase the top singular value on {rank}-pixel images (the authors: "
                          f"1 of 48); those anchors leave little of the image", stacklevel=3)
        return windows.numpy(), ids.numpy()

    def _choose(self, ctx: Context, rng: np.random.Generator) -> np.ndarray:
        noisy_mask = ctx.data.noisy_mask.detach().bool().cpu().numpy()
        noisy = np.flatnonzero(noisy_mask)
        clean = np.flatnonzero(~noisy_mask)
        total = len(noisy_mask)
        want = self.config.samples
        if want >= total:
            if want > total:
                warnings.warn(f"sharpness: samples={want} but the training split has {total} "
                              f"points; using all of them", stacklevel=3)
            return np.arange(total, dtype=np.int64)
        n_noisy = round(want * len(noisy) / total)
        if len(noisy):
            n_noisy = max(1, n_noisy)
        if len(clean):
            n_noisy = min(n_noisy, want - 1)
        n_clean = min(want - n_noisy, len(clean))
        n_noisy = want - n_clean
        pick = np.concatenate([rng.choice(clean, size=n_clean, replace=False),
                               rng.choice(noisy, size=n_noisy, replace=False)])
        return np.sort(pick).astype(np.int64)

    def prepare(self, ctx: Context) -> dict[str, np.ndarray]:
        import torch

        from ..functional.sharpness import draw_jitters

        cfg = self.config
        x = ctx.data.x_train
        if x.ndim != 4:
            raise ConfigError(f"sharpness needs (N, C, H, W) images, got inputs of shape "
                              f"{tuple(x.shape)}")
        windows, path_ids = self._windows(ctx)
        if cfg.hessian and x.shape[1] not in (1, 3):
            raise ConfigError(f"sharpness.hessian needs 1- or 3-channel images for the colour "
                              f"jitter (got {x.shape[1]} channels); set sharpness.hessian=false")
        rng = self.rng(ctx)
        index = self._choose(ctx, rng)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        factors, orders = draw_jitters(len(index), cfg.jitters, cfg.jitter_strength, gen)
        noisy = ctx.data.noisy_mask.detach().bool().cpu().numpy()[index]
        for subset, count in (("noisy", int(noisy.sum())), ("clean", int((~noisy).sum()))):
            if subset in cfg.subsets and count == 0:
                warnings.warn(f"sharpness: no {subset} points among the training data; "
                              f"its rows are NaN", stacklevel=2)
        self.inputs = {"index": index, "windows": windows.astype(np.int64),
                        "paths": path_ids.astype(np.int64)}
        if cfg.hessian:
            self.inputs["jitter_factors"] = factors.numpy()
            self.inputs["jitter_order"] = orders.numpy().astype(np.int64)
        self._state(ctx)
        return dict(self.inputs)

    def _state(self, ctx: Context) -> _DeviceState:
        """The fixed points, jitters and anchors on the device (built once per device)."""
        return self.on_device("state", ctx, lambda: self._build_state(ctx))

    def _build_state(self, ctx: Context) -> _DeviceState:
        import torch

        dev = torch.device(ctx.device)
        assert self.inputs is not None
        cfg = self.config
        data = ctx.data
        index = torch.as_tensor(self.inputs["index"])
        n = len(index)
        factors = self.inputs.get("jitter_factors", np.ones((n, 0, 3)))  # absent: hessian off
        orders = self.inputs.get("jitter_order", np.zeros((n, 0, 3), dtype=np.int64))
        x = data.x_train[index.to(data.x_train.device)].to(dev)
        st = _DeviceState(
            device=dev,
            x=x,
            y=data.y_train[index.to(data.y_train.device)].to(dev).long(),
            noisy=data.noisy_mask[index.to(data.noisy_mask.device)].to(dev).bool(),
            mean=data.mean.to(dev, torch.float64).view(1, -1, 1, 1),
            std=data.std.to(dev, torch.float64).view(1, -1, 1, 1),
            factors=torch.as_tensor(factors).to(dev),
            orders=torch.as_tensor(orders).to(dev),
            windows=torch.as_tensor(self.inputs["windows"]).to(dev),
            seg=x.new_zeros((0, self._paths(), len(cfg.svd_path))),
            cache=None,
        )
        a, g = self._anchor_count(), self._group()
        nbytes = n * a * g * x[0].numel() * x.element_size()
        limit = self.cache_bytes
        if ctx.max_memory is not None:  # a budget: the inputs may take a quarter of it
            limit = min(limit, int(ctx.max_memory) // 4)
        if dev.type == "cuda":
            limit = min(limit, torch.cuda.mem_get_info(dev)[0] // 4)
        cache = x.new_empty((n * a * g, *x.shape[1:])) if nbytes <= limit else None
        seg, dist = [st.seg], []
        for n0, n1 in self._blocks(st):
            anchors = self._anchors(st, n0, n1)
            seg.append(self._segments(anchors))
            dist.append(self._distances(st, anchors))
            if cache is not None:
                cache[n0 * a * g:n1 * a * g] = self._evaluations(st, n0, n1, anchors).flatten(0, 2)
        st.seg = torch.cat(seg)
        st.cache = cache
        if "distance" not in self.inputs:
            # ‖a − x‖ / ‖x‖ in [0, 1] pixel space, rounded so that a re-run on another device
            # (last-bit SVD differences) stores the same fixed inputs.
            d = torch.cat(dist) if dist else torch.zeros(0)
            self.inputs["distance"] = np.round(
                d.cpu().numpy().reshape(n, self._paths(), len(cfg.svd_path)), 6)
        return st

    def _paths(self) -> int:
        """Paths kept after dropping those that collapse onto another (P' <= P)."""
        if self.inputs is None:
            return self.config.paths
        return int(self.inputs["windows"].shape[0])

    def _distances(self, st: _DeviceState, anchors: torch.Tensor) -> torch.Tensor:
        """``‖a − x‖ / ‖x‖`` in [0, 1] pixel space for each anchor: ``(b, P'·K)`` float64."""
        pix = anchors.double() * st.std.unsqueeze(1) + st.mean.unsqueeze(1)
        diff = (pix[:, 1:] - pix[:, :1]).flatten(2).norm(dim=-1)
        return diff / pix[:, 0].flatten(1).norm(dim=-1, keepdim=True)

    def _anchor_count(self) -> int:
        """Inputs per point along its paths: the point itself, then P x K erasures."""
        return 1 + self._paths() * len(self.config.svd_path)

    def _group(self) -> int:
        """Evaluations per anchor: the anchor itself, then its M jitters (hessian on)."""
        return 1 + self.config.jitters if self.config.hessian else 1

    def _blocks(self, st: _DeviceState, min_points: int = 1) -> Iterator[tuple[int, int]]:
        from ..functional.batching import chunks

        n = len(st.x)
        per_point = max(1, self._anchor_count() * self._group() * st.x[0].numel() * 8)
        size = max(min_points, self.block_bytes // per_point, 1)
        yield from chunks(n, size)

    def _segments(self, anchors: torch.Tensor) -> torch.Tensor:
        from ..functional.sharpness import segment_lengths

        b, p, k = len(anchors), self._paths(), len(self.config.svd_path)
        path = anchors[:, 1:].reshape(b, p, k, *anchors.shape[2:]).double()
        return segment_lengths(anchors[:, 0].double(), path).to(anchors.dtype)

    def _anchors(self, st: _DeviceState, n0: int, n1: int) -> torch.Tensor:
        """Normalized anchors ``(b, A, C, H, W)`` of points n0..n1; anchor 0 is the point.

        The erasure runs in float64 in [0, 1] pixel space and each anchor is clamped to
        [0, 1], a valid image, so its colour jitters move it by the jitter alone.
        """
        import torch

        from ..functional.sharpness import svd_erasure_windows

        x = st.x[n0:n1]
        pix = x.double() * st.std + st.mean
        erased = svd_erasure_windows(pix, st.windows).clamp_(0.0, 1.0).flatten(1, 2)
        anchors = ((erased - st.mean) / st.std).to(x.dtype)  # (b, P*K, C, H, W)
        return torch.cat([x[:, None], anchors], dim=1)

    def _evaluations(self, st: _DeviceState, n0: int, n1: int,
                     anchors: torch.Tensor) -> torch.Tensor:
        """Every model input ``(b, A, G, C, H, W)``: each anchor, then its M jitters."""
        import torch

        from ..functional.sharpness import color_jitter

        if not self.config.hessian:
            return anchors[:, :, None]
        b, a = anchors.shape[:2]
        m = self.config.jitters
        shape = anchors.shape[2:]
        mean, std = st.mean.to(anchors.dtype), st.std.to(anchors.dtype)
        pix = anchors.flatten(0, 1) * std + mean
        pix = pix.view(b, a, 1, *shape).expand(b, a, m, *shape).reshape(-1, *shape)
        factors = st.factors[n0:n1, None].expand(b, a, m, 3).reshape(-1, 3)
        orders = st.orders[n0:n1, None].expand(b, a, m, 3).reshape(-1, 3)
        jit = (color_jitter(pix, factors, orders) - mean) / std
        return torch.cat([anchors[:, :, None], jit.view(b, a, m, *shape)], dim=2)

    def _stream(self, st: _DeviceState, batch_size: int) -> Iterator[torch.Tensor]:
        """The flattened (point, anchor, jitter) inputs in chunks of ``batch_size``."""
        import torch

        from ..functional.batching import chunks

        if st.cache is not None:
            for lo, hi in chunks(len(st.cache), batch_size):
                yield st.cache[lo:hi]
            return
        per_point = self._anchor_count() * self._group()
        buf: list[torch.Tensor] = []
        have = 0
        for n0, n1 in self._blocks(st, min_points=-(-batch_size // per_point)):
            flat = self._evaluations(st, n0, n1, self._anchors(st, n0, n1)).flatten(0, 2)
            buf.append(flat)
            have += len(flat)
            if have >= batch_size:
                cat = torch.cat(buf)
                full = len(cat) // batch_size * batch_size
                for lo, hi in chunks(full, batch_size):
                    yield cat[lo:hi]
                buf, have = [cat[full:]], len(cat) - full
        if have:
            yield torch.cat(buf)

    # ------------------------------------------------------------------ measurement

    def __call__(self, model: nn.Module, ctx: Context) -> dict[str, np.ndarray]:
        import torch

        from ..functional.sharpness import (
            geodesic_integrate,
            input_gradients,
            tangent_hessian_norm,
        )
        from ._budget import within_budget

        ctx = within_budget(self, model, ctx, order=1)
        st = self._state(ctx)
        cfg = self.config
        n, a, g = len(st.x), self._anchor_count(), self._group()
        p, k = self._paths(), len(cfg.svd_path)
        dev = st.device
        loss = torch.full((n * a,), math.nan, dtype=torch.float64, device=dev)
        correct = torch.full_like(loss, math.nan)
        jac = torch.full_like(loss, math.nan)
        hess = torch.full_like(loss, math.nan)
        pending: torch.Tensor | None = None
        lo = 0
        for xb in self._stream(st, ctx.batch_size):
            hi = lo + len(xb)
            yb = st.y[torch.arange(lo, hi, device=dev) // (a * g)]
            try:
                grads, l_b, c_b = input_gradients(model, xb, yb, len(xb))
            except TypeError as exc:  # the model blocks input gradients: the message as before
                raise ProbeError(str(exc)) from None
            grads = grads.flatten(1)
            off = (-lo) % g  # first un-jittered row of the chunk
            e0 = (lo + off) // g
            e1 = e0 + len(range(off, len(xb), g))
            loss[e0:e1] = l_b[off::g]
            correct[e0:e1] = c_b[off::g].to(loss.dtype)
            jac[e0:e1] = grads[off::g].norm(dim=1).to(loss.dtype)
            if cfg.hessian:
                start = lo
                if pending is not None and len(pending):
                    grads = torch.cat([pending, grads])
                    start -= len(pending)
                full = len(grads) // g
                gg = grads[:full * g].view(full, g, -1)
                hess[start // g:start // g + full] = tangent_hessian_norm(
                    gg[:, 0], gg[:, 1:], cfg.delta).to(loss.dtype)
                pending = grads[full * g:]
            lo = hi
        if lo != n * a * g:  # pragma: no cover - internal invariant
            raise RuntimeError(f"sharpness: evaluated {lo} inputs, expected {n * a * g}")

        seg = st.seg.double()

        def volumes(v: torch.Tensor) -> torch.Tensor:
            v = v.view(n, a)
            per_path = torch.cat([v[:, None, :1].expand(n, p, 1), v[:, 1:].view(n, p, k)], dim=2)
            return geodesic_integrate(per_path, seg)  # (n, K+1)

        weights = {"clean": ~st.noisy, "noisy": st.noisy,
                   "train": torch.ones_like(st.noisy)}
        w = torch.stack([weights[s] for s in cfg.subsets]).double()  # (S, n)
        count = w.sum(dim=1, keepdim=True)
        out: dict[str, np.ndarray] = {}
        for name, v in (("accuracy", correct), ("loss", loss), ("jacobian", jac),
                        ("hessian", hess)):
            if name == "hessian" and not cfg.hessian:
                out[name] = np.full((len(cfg.subsets), k + 1), np.nan)
                continue
            out[name] = ((w @ volumes(v)) / count).cpu().numpy()
        return out
