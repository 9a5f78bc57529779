"""Layerwise normalization of ReLU networks and the product of layer norms.

Liao, Miranda, Banburski, Hidary, Poggio, "Generalization puzzles in deep networks"
(papers/003):

* §1-2, eq. (1) and App. A eq. (7): a positively homogeneous network (ReLU, pooling, linear
  layers) satisfies ``f(W_1..W_K; x) = rho_1 ... rho_K f~(x)`` with ``W_k = rho_k W~_k`` and
  ``||W~_k|| = 1``; ``f~`` is the *layerwise-normalized* network and ``rho = prod rho_k`` the
  product of layer norms. The paper uses the Frobenius norm (Fig. 2, App. B) and notes that any
  ``L_p`` norm works (App. D, Fig. 9 uses ``L_1``).
* eq. (2)/(10): the quantity of interest is the cross-entropy of ``f~`` on the training set,
  which predicts the test cross-entropy of ``f~`` (Fig. 2b).
* App. C: batch normalization is "absorbed" into the weights and biases after training.
* Fig. 2 caption, App. B "Bottom" and App. H: for ResNets the layerwise form is not used;
  instead the logits are divided by the norm of the network's output on one fixed example.

Workflow (what the ``normalization`` probe does)::

    folded = fold_batchnorm(model)            # App. C
    ok, why = is_homogeneous(folded)          # eq. (1) holds exactly?
    rho = layer_norms(folded, p=2.0)          # rho_l, forward order
    log_rho = log_norm_product(rho)           # log prod rho_l
    f_tilde = normalized_network(folded, rho) # f~ = f / prod rho_l when ok

Decisions where the paper is silent:

* Biases. The paper's networks have no biases (App. B) or only a first-layer bias (App. L.1),
  which §2 counts as a weight on a constant input dimension, i.e. part of ``W_1``. After
  batch-norm folding every layer has a bias, often of a norm comparable to its weight's.
  Two conventions (:func:`layer_norms` ``first_bias``): by default ``rho_l`` counts weights
  only; with ``first_bias=True`` (the paper's) ``rho_1 = ||[W_1, b_1]||_p``. Either way the
  bias of layer ``l`` is divided by ``rho_1 ... rho_l``, which keeps eq. (1) exact: by
  induction the pre-activation of layer ``l`` in ``f~`` is that of ``f`` divided by
  ``rho_1 ... rho_l``, and ReLU / pooling commute with positive scalings. The conventions
  differ only in ``rho_1`` (so in ``prod rho`` and in how ``f~`` is scaled); biases of later
  layers are in neither ``rho_l``.
* Batch norm that does not directly follow a conv/linear layer (pre-activation ResNets:
  BN -> ReLU -> conv) cannot be folded into a preceding layer (and folding it into the
  *following* conv is inexact at zero-padded borders). It becomes a :class:`ChannelAffine`
  layer ``y = a x + b`` (``a = gamma / sqrt(var + eps)``, ``b = beta - a mean``), which is
  a weight layer of its own with ``rho = ||a||_p``. Batch norm without running statistics
  (which normalizes with batch statistics even in eval mode) cannot be folded at all and is
  left in place; :func:`is_homogeneous` then reports the network as not homogeneous.
* LeakyReLU and PReLU are positively homogeneous of degree 1 (``g(c z) = c g(z)`` for
  ``c > 0``) and are accepted; tanh, sigmoid, ReLU6, GELU, normalization layers, residual
  sums, concatenations and products of tensors are not.
"""

from __future__ import annotations

import copy
import math
import operator
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

__all__ = [
    "ChannelAffine",
    "fold_batchnorm",
    "is_homogeneous",
    "layer_norms",
    "log_norm_product",
    "normalized_network",
    "output_normalized_logits",
    "weight_layers",
]


class ChannelAffine(nn.Module):
    """Per-channel affine map ``y = weight[c] * x + bias[c]`` along dim 1.

    The eval-mode form of a batch norm that could not be folded into a preceding conv/linear
    layer (see the module docstring); a weight layer with ``rho = ||weight||_p``.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm) -> ChannelAffine:
        """The eval-mode map of ``bn`` (which must have running statistics)."""
        assert bn.running_mean is not None
        weight, bias = _affine_weights(bn)
        out = cls(bn.num_features).to(bn.running_mean.device)
        with torch.no_grad():
            out.weight.copy_(weight)
            out.bias.copy_(bias)
        return out.to(weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}"


def _affine_weights(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` of the eval-mode map ``a x + b`` of ``bn``, computed in float64 and returned
    in the batch norm's dtype."""
    assert bn.running_mean is not None and bn.running_var is not None
    mean = bn.running_mean.detach().double()
    scale = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    dtype = bn.weight.dtype if bn.weight is not None else bn.running_mean.dtype
    return scale.to(dtype), shift.to(dtype)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: Module types that are weight layers of the folded network.
WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    *_CONVS, *_CONV_TRANSPOSES, nn.Linear, ChannelAffine)

# Modules g with g(c z) = c g(z) for every c > 0 that carry no weights of their own.
_HOMOGENEOUS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.LPPool1d, nn.LPPool2d,
    nn.Flatten, nn.Unflatten, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_HOMOGENEOUS_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({
    F.relu, torch.relu, F.leaky_relu, F.prelu,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.transpose,
    torch.permute, torch.mean, torch.sum, torch.amax, operator.getitem,
})
_HOMOGENEOUS_METHODS = frozenset({
    "relu", "view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze",
    "unsqueeze", "mean", "sum", "amax", "clone", "__getitem__",
})
_SCALINGS = frozenset({operator.mul, operator.truediv, torch.mul, torch.div, operator.neg,
                       torch.neg, "mul", "div", "neg", "__mul__", "__truediv__"})
_DIVISIONS = frozenset({operator.truediv, torch.div, "div", "__truediv__"})
_SUMS = frozenset({operator.add, operator.sub, operator.iadd, operator.isub, torch.add,
                   torch.sub, "add", "sub", "add_", "sub_", "__add__", "__sub__"})
_SHAPE_METHODS = frozenset({"size", "dim", "numel"})


class _Tracer(fx.Tracer):
    """torch.fx tracer that also keeps :class:`ChannelAffine` as a leaf module."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, ChannelAffine) or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a GraphModule sharing its submodules (no copy); TypeError if untraceable."""
    if isinstance(model, fx.GraphModule):
        return model
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TypeError(
            f"cannot trace model {type(model).__name__} with torch.fx ({type(exc).__name__}: "
            f"{first}); layerwise normalization needs a model without data-dependent control flow"
        ) from None
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None) -> fx.GraphModule:
    """A new eval-mode network equal in output to ``model.eval()`` with batch norm absorbed.

    App. C of the paper: "after training, the means and standard deviations of BN are
    'absorbed' into the network's weights and biases". The graph comes from ``torch.fx``;
    every eval-mode batch norm (with running statistics) whose input is the output of a
    Conv/ConvTranspose/Linear module used nowhere else is folded into that layer with
    PyTorch's ``torch.nn.utils.fusion.fuse_conv_bn_eval`` / ``fuse_linear_bn_eval`` (the
    layer keeps its module path). Any other batch norm with running statistics becomes a
    :class:`ChannelAffine` weight layer at the batch norm's path; batch norm without running
    statistics is left as is. ``model`` is not modified.

    Args:
        model: any torch.fx-traceable network (TypeError otherwise).
        example: optional input batch. With it, Linear -> BatchNorm1d is folded only when the
            linear output is 2-D (a BatchNorm1d over dim 1 of a 3-D linear output normalizes
            another axis); without it, it is folded when ``out_features == num_features``.

    Returns:
        an ``fx.GraphModule`` in eval mode, its weight layers at the original module paths.
    """
    return _fold(model, example)[0]


#: What :func:`_fold` did to one batch norm: ``(kind, layer_path, bn_path)``, kind one of
#: ``conv``, ``conv_transpose``, ``linear`` (fused into the layer at ``layer_path``) or
#: ``affine`` (a :class:`ChannelAffine` at ``bn_path == layer_path``).
_Action = tuple[str, str, str]


def _fold(model: nn.Module, example: torch.Tensor | None
          ) -> tuple[fx.GraphModule, list[_Action]]:
    """:func:`fold_batchnorm` and the list of folds it made (see :class:`FoldedNetwork`)."""
    actions: list[_Action] = []
    gm = _trace(copy.deepcopy(model).eval())
    gm.eval()
    graph = gm.graph
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    if example is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(gm).propagate(example)

    with torch.no_grad():
        for node in list(graph.nodes):
            if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
                continue
            bn = modules[node.target]
            if bn.running_mean is None or bn.running_var is None:
                continue  # batch statistics in eval mode: not a fixed affine map
            fused: nn.Module | None = None
            prev = node.args[0] if len(node.args) == 1 and not node.kwargs else None
            if (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1
                    and calls[prev.target] == 1 and calls[node.target] == 1):
                layer = modules[prev.target]
                kind = ""
                if isinstance(layer, _CONVS) and layer.out_channels == bn.num_features:
                    fused, kind = fuse_conv_bn_eval(layer, bn), "conv"
                elif (isinstance(layer, _CONV_TRANSPOSES)
                      and layer.out_channels == bn.num_features):
                    fused, kind = fuse_conv_bn_eval(layer, bn, transpose=True), "conv_transpose"
                elif isinstance(layer, nn.Linear) and layer.out_features == bn.num_features:
                    meta = prev.meta.get("tensor_meta")
                    if meta is None or len(meta.shape) == 2:
                        fused, kind = fuse_linear_bn_eval(layer, bn), "linear"
            if fused is not None and isinstance(prev, fx.Node) and isinstance(prev.target, str):
                _set_submodule(gm, prev.target, fused)
                modules[prev.target] = fused
                node.replace_all_uses_with(prev)
                graph.erase_node(node)
                actions.append((kind, prev.target, str(node.target)))
            else:
                affine = ChannelAffine.from_batchnorm(bn)
                _set_submodule(gm, node.target, affine)
                modules[node.target] = affine
                actions.append(("affine", str(node.target), str(node.target)))
    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm.eval(), actions


def _signature(model: nn.Module) -> tuple[Any, ...]:
    """What a folded graph depends on besides values: the architecture and the tensors'
    names, shapes, dtypes and devices."""
    return (type(model), tuple((k, tuple(t.shape), t.dtype, t.device)
                               for k, t in model.state_dict().items()))


class FoldedNetwork:
    """:func:`fold_batchnorm` and :func:`normalized_network` built once per architecture,
    refilled per checkpoint.

    Tracing, shape propagation, fusion and deep copies cost far more than the arithmetic; the
    graph depends only on the architecture. ``FoldedNetwork(model, example)`` folds once;
    :meth:`refill` copies another checkpoint's tensors of the same architecture into the
    folded graph (fused weights recomputed with the same PyTorch fusion arithmetic, the rest
    copied), so ``refill(m)`` equals ``fold_batchnorm(m, example)`` bit for bit;
    :meth:`normalized` does the same for :func:`normalized_network`. Not thread-safe: both
    return the same modules, overwritten by the next call.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor | None = None) -> None:
        self._example = example
        self.module, self._actions = _fold(model, example)
        self.layers = weight_layers(self.module)
        self.paths = [path for path, _ in self.layers]
        derived = {f"{path}.{n}" for _, path, _ in self._actions for n in ("weight", "bias")}
        self._copied = [k for k in self.module.state_dict() if k not in derived]
        # a graph holding tensors of its own (traced constants): fold every time instead
        self._refold = not set(self._copied) <= set(model.state_dict())
        self._signature = _signature(model)
        self._normalized: nn.Module | None = None

    def fits(self, model: nn.Module) -> bool:
        """Whether ``model`` has the architecture this network was folded from."""
        return _signature(model) == self._signature

    def refill(self, model: nn.Module) -> fx.GraphModule:
        """The folded network of ``model`` (which must :meth:`fits`), in place of the last."""
        from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

        if not self.fits(model):
            raise ValueError(f"model {type(model).__name__} does not have the architecture "
                             "this network was folded from")
        if self._refold:
            self.module = _fold(model, self._example)[0]
            self.layers = weight_layers(self.module)
            self._normalized = None
            return self.module
        src = dict(model.named_modules())
        state = model.state_dict()
        dst = self.module.state_dict()
        with torch.no_grad():
            for key in self._copied:
                dst[key].copy_(state[key])
            for kind, path, bn_path in self._actions:
                bn = src[bn_path]
                assert isinstance(bn, _BatchNorm)
                out = self.module.get_submodule(path)
                if kind == "affine":
                    w, b = _affine_weights(bn)
                else:
                    layer = src[path]
                    assert bn.running_mean is not None and bn.running_var is not None
                    if kind == "linear":
                        w, b = fuse_linear_bn_weights(
                            layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps,
                            bn.weight, bn.bias)
                    else:
                        w, b = fuse_conv_bn_weights(
                            layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps,
                            bn.weight, bn.bias, transpose=kind == "conv_transpose")
                _weight(out).copy_(w)
                bias = getattr(out, "bias", None)
                assert isinstance(bias, torch.Tensor)
                bias.copy_(b)
        return self.module

    def normalized(self, norms: torch.Tensor, in_place: bool = False) -> nn.Module:
        """:func:`normalized_network` of the network last :meth:`refill`-ed, in place of the
        last one returned. With ``in_place`` the folded network itself is scaled (no second
        copy of the model is kept; :attr:`module` is then the normalized network until the
        next :meth:`refill`), the same numbers bit for bit."""
        if in_place:
            _scale_layers(self.module, self.layers, norms)
            return self.module
        if self._normalized is None:
            self._normalized = copy.deepcopy(self.module)
        out = self._normalized
        src = self.module.state_dict()
        with torch.no_grad():
            for key, t in out.state_dict().items():
                t.copy_(src[key])
        _scale_layers(out, self.layers, norms)
        return out


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The weight layers ``W_1..W_K`` of eq. (1) as ``(module_path, module)``, forward order.

    Weight layers are Conv*, ConvTranspose*, Linear and :class:`ChannelAffine` modules; the
    order is their first call in the torch.fx graph, i.e. execution order (not the order of
    definition in ``__init__``). Pass the folded network (:func:`fold_batchnorm`): batch norm
    modules are not weight layers. The modules returned are ``model``'s own (not copies).
    """
    gm = _trace(model)
    out: list[tuple[str, nn.Module]] = []
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target not in seen:
            module = gm.get_submodule(node.target)
            if isinstance(module, WEIGHT_LAYER_TYPES):
                seen.add(node.target)
                out.append((node.target, module))
    return out


def _weight(module: nn.Module) -> torch.Tensor:
    w = module.weight
    assert isinstance(w, torch.Tensor)
    return w


def _check_p(p: float) -> None:
    if not (p > 0):  # also rejects NaN
        raise ValueError(f"norm order p must be > 0 (got {p})")


def layer_norms(model: nn.Module, p: float = 2.0, first_bias: bool = False) -> torch.Tensor:
    """``rho_l = ||W_l||_p`` for the weight layers of ``model`` in forward order (eq. 1).

    The norm is the p-norm of the flattened weight tensor, ``(sum |w|^p)^(1/p)`` (``p=inf``:
    max |w|); p = 2 is the Frobenius norm the paper uses (Fig. 2), p = 1 its App. D variant.
    Biases are not part of ``W_l``, except with ``first_bias=True``: the first layer's bias is
    counted in ``rho_1 = ||[W_1, b_1]||_p``, the paper's convention (§2: the input-layer bias
    is "one of the input dimensions being a constant"). Computed in float64 on the weights'
    device.

    Returns:
        float64 tensor of shape ``(K,)``.
    """
    _check_p(p)
    layers = weight_layers(model)
    if not layers:
        raise TypeError(f"model {type(model).__name__} has no Conv/Linear weight layers")
    flat = [_weight(m).detach().reshape(-1).double() for _, m in layers]
    b1 = getattr(layers[0][1], "bias", None)
    if first_bias and isinstance(b1, torch.Tensor):
        flat[0] = torch.cat([flat[0], b1.detach().reshape(-1).double().to(flat[0].device)])
    return torch.stack([torch.linalg.vector_norm(w, ord=p) for w in flat])


def log_norm_product(norms: torch.Tensor) -> torch.Tensor:
    """``log prod_l rho_l = sum_l log rho_l`` (eq. 1, ``rho = rho_1 ... rho_K``).

    Summed in log space in float64, so deep or large networks do not overflow; a zero norm
    gives ``-inf``. Returns a 0-d float64 tensor.
    """
    return torch.log(norms.double()).sum()


def normalized_network(model: nn.Module, norms: torch.Tensor) -> nn.Module:
    """The layerwise-normalized network ``f~`` of eq. (1) (a copy; ``model`` is untouched).

    Each weight ``W_l`` (forward order, :func:`weight_layers`) becomes ``W_l / rho_l`` and
    its bias ``b_l / (rho_1 ... rho_l)``; for a positively homogeneous network
    (:func:`is_homogeneous`) this gives ``f~(x) = f(x) / prod_l rho_l`` exactly. The
    cumulative products are formed as ``exp(-cumsum(log rho))`` in float64.

    Args:
        model: the folded network (:func:`fold_batchnorm`).
        norms: ``rho_l`` for its weight layers, e.g. :func:`layer_norms`.
    """
    layers = weight_layers(model)
    out = copy.deepcopy(model)
    _scale_layers(out, layers, norms)
    return out


def _scale_layers(out: nn.Module, layers: list[tuple[str, nn.Module]],
                  norms: torch.Tensor) -> None:
    """``W_l / rho_l`` and ``b_l / (rho_1 ... rho_l)`` in place in ``out`` (eq. 1)."""
    norms = norms.detach().double().reshape(-1)
    if len(norms) != len(layers):
        raise ValueError(f"got {len(norms)} layer norms for {len(layers)} weight layers")
    bad = [path for (path, _), rho in zip(layers, norms.tolist()) if not 0 < rho < math.inf]
    if bad:
        raise ValueError(f"layer '{bad[0]}' has norm 0 or not finite; f~ is undefined")
    bias_scale = torch.exp(-torch.cumsum(torch.log(norms), 0))
    with torch.no_grad():
        for (path, _), rho, scale in zip(layers, norms, bias_scale):
            module = out.get_submodule(path)
            w = _weight(module)
            w.copy_((w.double() / rho.to(w.device)).to(w.dtype))
            b = getattr(module, "bias", None)
            if b is not None:
                b.copy_((b.double() * scale.to(b.device)).to(b.dtype))


def _tensor_args(node: fx.Node, shape_nodes: set[fx.Node]) -> list[fx.Node]:
    """Every tensor-valued node among ``node``'s arguments, repeats included."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return [a for a in found if a not in shape_nodes]


def _is_number(a: Any) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def is_homogeneous(model: nn.Module) -> tuple[bool, str]:
    """Whether eq. (1) holds exactly for ``model``: ``f = prod rho_l * f~``.

    True iff the torch.fx graph is a single chain input -> W_1 -> ... -> W_K -> output whose
    weight layers (:data:`WEIGHT_LAYER_TYPES`) are each applied once, each to the output of
    the previous one, with only positively homogeneous operations in between: ReLU, LeakyReLU,
    PReLU, max/avg/adaptive/LP pooling, flatten/view/reshape/permute/indexing, mean/sum,
    dropout (eval mode), identity, and multiplication by a constant number. Anything else
    (residual sums, concatenation, products of tensors, adding constants, tanh/sigmoid/GELU,
    unfolded batch norm or other normalization layers, tensor constants) makes it False.
    Call it on the folded network (:func:`fold_batchnorm`).

    Returns:
        ``(ok, reason)``; ``reason`` names the first offending graph node when not ok.
    """
    gm = _trace(model)
    layers: list[str] = []
    reach: dict[fx.Node, frozenset[str]] = {}  # last weight layers each tensor depends on
    shape_nodes: set[fx.Node] = set()  # nodes computing sizes, not tensors
    inputs = 0
    for node in gm.graph.nodes:
        tensor_in = _tensor_args(node, shape_nodes)
        src = frozenset().union(*(reach.get(a, frozenset()) for a in tensor_in))
        where = f"node '{node.name}'"
        if node.op == "placeholder":
            inputs += 1
            if inputs > 1:
                return False, f"{where}: the model takes more than one input"
            reach[node] = frozenset({"<input>"})
            continue
        if node.op == "output":
            want = frozenset({layers[-1] if layers else "<input>"})
            if src != want:
                return False, f"{where}: the output does not come from the last weight layer only"
            break
        if node.op == "get_attr":
            return False, (f"{where} reads tensor attribute '{node.target}' outside a module "
                           "(a constant or functional weight)")
        target = node.target
        if (node.op == "call_method" and target in _SHAPE_METHODS) or (
                node.op == "call_function" and target is getattr
                and node.args[1] in ("shape", "ndim", "dtype", "device")) or (
                node.op == "call_function" and getattr(target, "__module__", None)
                in ("_operator", "operator", "builtins") and node.all_input_nodes
                and all(a in shape_nodes for a in node.all_input_nodes)):
            shape_nodes.add(node)
            continue
        if node.op == "call_module":
            module = gm.get_submodule(target)
            if isinstance(module, WEIGHT_LAYER_TYPES):
                if target in layers:
                    return False, f"{where}: weight layer '{target}' is applied more than once"
                want = frozenset({layers[-1] if layers else "<input>"})
                if src != want:
                    return False, (f"{where}: weight layer '{target}' does not take the output "
                                   f"of the previous weight layer alone")
                layers.append(target)
                reach[node] = frozenset({target})
                continue
            if isinstance(module, _BatchNorm):
                return False, (f"{where}: batch norm '{target}' is not folded (no running "
                               "statistics, or fold_batchnorm was not applied)")
            if not isinstance(module, _HOMOGENEOUS_MODULES):
                return False, (f"{where}: module '{target}' ({type(module).__name__}) is not "
                               "positively homogeneous")
        elif target in _SUMS:
            if len(tensor_in) >= 2:
                return False, f"{where}: residual sum of two tensors ({_name(target)})"
            return False, f"{where}: adds a constant ({_name(target)})"
        elif target in _SCALINGS:
            scalars = [a for a in node.args if not isinstance(a, fx.Node)]
            if len(tensor_in) != 1 or node.kwargs or not all(_is_number(a) for a in scalars):
                return False, f"{where}: {_name(target)} of tensors (not by a constant number)"
            if target in _DIVISIONS and node.args[0] is not tensor_in[0]:
                return False, f"{where}: divides a constant by a tensor"
        elif node.op == "call_function":
            if target not in _HOMOGENEOUS_FUNCTIONS:
                return False, f"{where}: function '{_name(target)}' is not positively homogeneous"
            if target in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d) and node.kwargs.get(
                    "training", node.args[2] if len(node.args) > 2 else True):
                return False, f"{where}: dropout in training mode"
        elif node.op == "call_method" and target not in _HOMOGENEOUS_METHODS:
            return False, f"{where}: method '{target}' is not positively homogeneous"
        if len(src) > 1:
            return False, f"{where}: combines the outputs of several layers"
        reach[node] = src
    if not layers:
        return False, "the model has no Conv/Linear weight layers"
    return True, f"a chain of {len(layers)} weight layers with positively homogeneous operations"


def output_normalized_logits(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Logits divided by the L2 norm of the network's logits on one fixed reference example.

    The paper's ResNet procedure (Fig. 2 caption, App. B "Bottom", App. H): "the
    normalization in the case of ResNet was performed by using the norm of the output of each
    network on one example from CIFAR-10 (randomly chosen)", the same example for every
    network, because the product of layer norms "is not obvious for ResNets". The paper does
    not name the norm; we use the L2 norm of the logit vector ``f(x_ref)``. App. H notes this
    shortcut compares networks trained on the same training set (it was not applied to the
    random-label network). For a homogeneous network, ``f(x)/||f(x_ref)|| = f~(x)/||f~(x_ref)||``:
    a per-network constant rescaling, like eq. (1).

    Args:
        logits: ``(N, C)`` logits of the network.
        ref_logits: ``(C,)`` or ``(1, C)`` logits of the same network on the reference example.

    Returns:
        ``logits / ||ref_logits||_2`` in the dtype of ``logits``.
    """
    if ref_logits.dim() > 1 and ref_logits.shape[0] != 1:
        raise ValueError(f"ref_logits must be the logits of one example, got shape "
                        f"{tuple(ref_logits.shape)}")
    norm = torch.linalg.vector_norm(ref_logits.detach().reshape(-1).double())
    return (logits.double() / norm.to(logits.device)).to(logits.dtype)
