"""Model registry and built-in architectures (mcnn, mcnn_nobn, preact_resnet18, mlp)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import registered as registered_in
from torch import nn

from ckpt_analyzer.errors import CkptError, UsageError
from ckpt_analyzer.models import MODELS, build_model, count_parameters, load_factory
from ckpt_analyzer.models.mcnn import mcnn, mcnn_nobn
from ckpt_analyzer.models.mlp import mlp
from ckpt_analyzer.models.preact_resnet import PreActResNet, preact_resnet18

torch.set_num_threads(1)

BUILTINS = {"mcnn": mcnn, "mcnn_nobn": mcnn_nobn, "preact_resnet18": preact_resnet18, "mlp": mlp}


@pytest.fixture
def registered() -> Iterator[None]:
    """Entry points are not active in a source checkout: register the built-ins by hand."""
    with registered_in(MODELS, BUILTINS):
        yield


# ---------------------------------------------------------------- slow, obvious references
def ref_mcnn_params(w: int, classes: int, cin: int, bn: bool) -> int:
    total, c_in = 0, cin
    for c in (w, 2 * w, 4 * w, 8 * w):
        total += c_in * c * 3 * 3 + c  # conv weight + bias
        if bn:
            total += 2 * c  # gamma, beta
        c_in = c
    return total + 8 * w * classes + classes


def ref_preact_params(k: int, classes: int, cin: int) -> int:
    total = cin * k * 9  # stem, no bias
    c_in = k
    for stage in range(4):
        c = k * 2**stage
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            total += 2 * c_in + c_in * c * 9 + 2 * c + c * c * 9
            if stride != 1 or c_in != c:
                total += c_in * c  # 1x1 shortcut, no bias, no BN
            c_in = c
    return total + c_in * classes + classes


def nakkiran_mcnn(c: int, num_classes: int) -> nn.Sequential:
    """The reference mcnn (harvard-ml double-descent models/mcnn.py) for 32x32 RGB inputs."""
    class Flatten(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(x.size(0), x.size(1))

    return nn.Sequential(
        nn.Conv2d(3, c, 3, 1, 1, bias=True), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, 1, 1, bias=True), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * c, 4 * c, 3, 1, 1, bias=True), nn.BatchNorm2d(4 * c), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4 * c, 8 * c, 3, 1, 1, bias=True), nn.BatchNorm2d(8 * c), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.MaxPool2d(4), Flatten(), nn.Linear(8 * c, num_classes, bias=True),
    )


def ref_preact_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """PreActResNet18 forward written out with functional ops (eval-mode BN), 32x32 inputs."""
    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"],
                            sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5)

    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    for stage in range(1, 5):
        for block in range(2):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            pre = F.relu(bn(out, p + ".bn1"))
            if p + ".shortcut.0.weight" in sd:
                short = F.conv2d(pre, sd[p + ".shortcut.0.weight"], stride=stride)
            else:
                short = out
            h = F.conv2d(pre, sd[p + ".conv1.weight"], stride=stride, padding=1)
            h = F.conv2d(F.relu(bn(h, p + ".bn2")), sd[p + ".conv2.weight"], padding=1)
            out = h + short
    out = F.avg_pool2d(out, 4).flatten(1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


# ---------------------------------------------------------------- architectures
@pytest.mark.parametrize("width", [1, 2, 3, 5, 16])
def test_parameter_counts_match_hand_count(width: int) -> None:
    assert count_parameters(mcnn(width, 10, 3)) == ref_mcnn_params(width, 10, 3, True)
    assert count_parameters(mcnn_nobn(width, 7, 1)) == ref_mcnn_params(width, 7, 1, False)
    assert count_parameters(preact_resnet18(width, 10, 3)) == ref_preact_params(width, 10, 3)
    hidden = 16 * width
    assert count_parameters(mlp(width, 10, 1)) == 64 * hidden + hidden + hidden * 10 + 10


def test_preact_resnet18_width64_is_the_standard_11m_model() -> None:
    # PreActResNet18 for CIFAR-10 (k = 64) has the well-known 11,171,146 parameters.
    assert count_parameters(preact_resnet18(64, 10, 3)) == 11_171_146


def test_print_mcnn_parameter_counts() -> None:
    counts = {w: count_parameters(mcnn(w, 10, 1)) for w in range(1, 17)}
    print("mcnn parameters (digits, 10 classes):", counts)
    assert all(counts[w] < counts[w + 1] for w in range(1, 16))


@pytest.mark.parametrize("name", sorted(BUILTINS))
@pytest.mark.parametrize("side", [8, 28, 32, 5])
@pytest.mark.parametrize("cin", [1, 3])
def test_any_image_side_and_channels(name: str, side: int, cin: int) -> None:
    model = BUILTINS[name](2, 7, cin).eval()
    with torch.no_grad():
        out = model(torch.rand(3, cin, side, side))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_weights_depend_only_on_the_global_seed(name: str) -> None:
    torch.manual_seed(123)
    a = BUILTINS[name](3, 10, 3).state_dict()
    torch.manual_seed(123)
    b = BUILTINS[name](3, 10, 3).state_dict()
    torch.manual_seed(124)
    c = BUILTINS[name](3, 10, 3).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_state_dict_round_trip(name: str) -> None:
    src, dst = BUILTINS[name](2, 10, 3), BUILTINS[name](2, 10, 3)
    dst.load_state_dict(src.state_dict(), strict=True)
    src.eval(), dst.eval()
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_mcnn_structure() -> None:
    bn = mcnn(4, 10, 3)
    nobn = mcnn_nobn(4, 10, 3)
    bns = [m for m in bn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [m.num_features for m in bns] == [4, 8, 16, 32]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in nobn.modules())
    for model in (bn, nobn):
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert [c.out_channels for c in convs] == [4, 8, 16, 32]
        assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None
                   for c in convs)
        assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
        linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert len(linear) == 1 and linear[0].in_features == 32


def test_mcnn_equals_nakkiran_reference_on_32x32() -> None:
    gen = torch.Generator().manual_seed(0)
    ours = mcnn(3, 10, 3)
    randomize_bn(ours, gen)
    ref = nakkiran_mcnn(3, 10)
    ref.load_state_dict(ours.state_dict(), strict=True)  # same keys, same shapes
    ours.eval(), ref.eval()
    x = torch.rand(5, 3, 32, 32, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_mcnn_nobn_loads_gamba_layout() -> None:
    # Gamba et al.'s make_cnn(use_batch_norm=False) keeps the indices with nn.Identity.
    ref = nakkiran_mcnn(2, 10)
    for i in (1, 4, 8, 12):
        ref[i] = nn.Identity()
    ours = mcnn_nobn(2, 10, 3)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_preact_resnet18_structure() -> None:
    model = preact_resnet18(4, 10, 3)
    assert isinstance(model, PreActResNet)
    assert model.conv1.bias is None and model.conv1.out_channels == 4
    names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    # every BN sits inside a block (pre-activation); none after the last stage
    assert len(names) == 16 and all(n.split(".")[-1] in ("bn1", "bn2") for n in names)
    shortcuts = {n: m for n, m in model.named_modules() if n.endswith("shortcut")}
    assert sorted(shortcuts) == ["layer2.0.shortcut", "layer3.0.shortcut", "layer4.0.shortcut"]
    for sc in shortcuts.values():
        (conv,) = list(sc.children())
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is None
        assert conv.stride == (2, 2)
    widths = [getattr(model, f"layer{i}")[1].conv2.out_channels for i in range(1, 5)]
    assert widths == [4, 8, 16, 32]
    assert model.linear.in_features == 32


def test_preact_resnet18_equals_functional_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    model = preact_resnet18(2, 10, 3)
    randomize_bn(model, gen)
    model.eval()
    x = torch.rand(3, 3, 32, 32, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_preact_forward(model.state_dict(), x))


def test_mlp_pools_to_8x8() -> None:
    model = mlp(2, 10, 1)
    x = torch.rand(4, 1, 8, 8)
    lin1, lin2 = [m for m in model.modules() if isinstance(m, nn.Linear)]
    expected = F.linear(F.relu(F.linear(x.flatten(1), lin1.weight, lin1.bias)),
                        lin2.weight, lin2.bias)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


# ---------------------------------------------------------------- registry and factories
def test_build_model_by_name(registered: None) -> None:
    torch.manual_seed(0)
    a = build_model("mcnn", 2, 10, 1)
    torch.manual_seed(0)
    b = mcnn(2, 10, 1)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in b.state_dict())


def test_unknown_arch_suggests_closest(registered: None) -> None:
    with pytest.raises(UsageError, match="did you mean 'mcnn'"):
        build_model("mcnnn", 2, 10, 1)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_width(bad: object, registered: None) -> None:
    with pytest.raises(UsageError, match="width must be a positive integer"):
        build_model("mcnn", bad, 10, 1)  # type: ignore[arg-type]


def test_factory_from_module_spec() -> None:
    assert load_factory("ckpt_analyzer.models.mcnn:mcnn") is mcnn
    model = build_model("ckpt_analyzer.models.preact_resnet:preact_resnet18", 1, 10, 3)
    assert count_parameters(model) == ref_preact_params(1, 10, 3)


def test_factory_from_file(tmp_path: Path) -> None:
    f = tmp_path / "my_models.py"
    f.write_text(textwrap.dedent("""
        from torch import nn

        def tiny(width, num_classes, in_channels):
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

        class Zoo:
            @staticmethod
            def linear(width, num_classes, in_channels):
                return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                     nn.Linear(4 * in_channels, num_classes))

        NOT_CALLABLE = 3

        def not_a_module(width, num_classes, in_channels):
            return "a string"

        def broken(width, num_classes, in_channels):
            raise RuntimeError("boom\\nsecond line")
    """))
    model = build_model(f"{f}:Zoo.linear", 1, 5, 3)
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 5)
    assert callable(load_factory(f"{f}:tiny"))
    with pytest.raises(UsageError, match="returned str, not a torch.nn.Module"):
        build_model(f"{f}:not_a_module", 1, 5, 3)
    with pytest.raises(UsageError, match="not callable"):
        load_factory(f"{f}:NOT_CALLABLE")
    with pytest.raises(UsageError, match="no attribute 'nope'"):
        load_factory(f"{f}:nope")
    with pytest.raises(CkptError, match="failed to build: RuntimeError: boom$"):
        build_model(f"{f}:broken", 1, 5, 3)


def test_factory_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import this_module_does_not_exist_xyz\n")
    cases = [
        ("no_such_module_xyz:factory", "cannot import module 'no_such_module_xyz'"),
        (f"{tmp_path}/missing.py:f", "no such file"),
        (f"{bad}:f", "importing .* failed: ModuleNotFoundError"),
        ("just_a_name_without_colon.py", "expected 'module:factory'"),
        ("ckpt_analyzer.models.mcnn:", "expected 'module:factory'"),
    ]
    for spec, pattern in cases:
        with pytest.raises(UsageError, match=pattern) as info:
            load_factory(spec)
        assert "\n" not in str(info.value)
    assert not any(k.startswith("ckpt_analyzer_user_bad_") for k in sys.modules)
