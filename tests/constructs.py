"""Small models, one per graph construct, for the surgery and the zoo tests (no torchvision needed).

Every entry of :data:`CONSTRUCTS` is a zero-argument builder returning ``(model, example_inputs)``:
a freshly built, deterministic (seeded) model in eval mode and its example inputs, a tensor, a tuple of
tensors (``model(*inputs)``) or a dict of keyword tensors (``model(**inputs)``), batch 2, CIFAR-ish
sizes. :data:`HEADS` names, for every construct, the layer(s) whose outputs must stay (the classes, the
image channels of a decoder, both heads of a two-output model).

Normalisation layers get random affine parameters (BN-scale scores differ between channels) and
BatchNorm running statistics calibrated on random inputs (:func:`calibrate_bn`), so the outputs depend on
the input and a wrongly removed channel shows in them.

:data:`REFUSED` names the constructs whose channel groups Torch-Pruning 1.6.1 itself cannot handle (an
expected one-line refusal from prunelab), :data:`REFUSED_WHY` says why. It is measured, not guessed:
``tests/zoo/test_constructs.py`` runs ``tp.pruner.MagnitudePruner(model, example_inputs,
importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.3, ignored_layers=[heads])``, steps it,
runs the pruned model and compares it with the original whose removed channels are zeroed
(``tests/zoo/tp_reference.py``). Measured with torch 2.13 and 2.14.1, Torch-Pruning 1.6.1:

========================  ==========================================================
construct                 Torch-Pruning 1.6.1
========================  ==========================================================
plain_flatten_linear      prunes, equals the masked original (max |diff| < 1e-7)
residual_add              prunes, equal
depthwise_separable       prunes, equal
grouped_conv              prunes, equal (groups=4 kept, channels per group shrink)
concat_dense              prunes, equal
concat_slice_ghost        **fails**: pruned model's forward raises (constant slice width)
split_sized               **wrong**: runs, but differs (0.33; channels of one part mapped to the other)
split_chunk               **fails**: pruned model's forward raises (constant split sizes)
squeeze_excite            prunes, equal
head_registered_first     prunes, equal
conv_classifier_head      prunes, equal
tuple_outputs             prunes, equal
dict_output               prunes, equal
multi_input               prunes, equal
keyword_inputs            prunes, equal
conv_transpose_decoder    prunes, equal
layernorm_convnext        prunes, runs; not equal to zero-masking (norm statistics)
bare_parameter            prunes, equal (bare parameters pruned as unwrapped parameters)
group_norm                prunes, runs; not equal to zero-masking (norm statistics)
custom_layer              prunes, equal (its parameters pruned as unwrapped parameters)
channel_shuffle           **wrong**: runs, but differs from the masked original (0.31)
linear_mlp                prunes, equal
partial_residual          **hangs**: its channel-group search does not end (> 17,000 entries in 20 s)
========================  ==========================================================

:data:`NORM_STATISTICS` names the two whose pruned model is consistent but cannot equal the zero-masked
original, because the norm's statistics run over the channels.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CONSTRUCTS",
    "HANGS",
    "HEADS",
    "NORM_STATISTICS",
    "REFUSED",
    "REFUSED_WHY",
    "build",
    "calibrate_bn",
    "call",
    "example_batch",
    "randomize_norms",
]

BATCH = 2
SEED = 0

ExampleInputs = Tensor | tuple[Tensor, ...] | dict[str, Tensor]


def randomize_norms(model: nn.Module, seed: int = SEED) -> nn.Module:
    """Give every BatchNorm/GroupNorm/LayerNorm random affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            norm = isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm))
            if norm and getattr(module, "weight", None) is not None:
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=g))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.running_mean is not None:
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=g))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))
    return model


def calibrate_bn(model: nn.Module, inputs: ExampleInputs, batches: int = 2, batch: int = 16) -> nn.Module:
    """BatchNorm running statistics = the statistics of its input on random inputs shaped like ``inputs``
    (float tensors redrawn standard-normal at batch ``batch``, others repeated), so deep stacks do not
    collapse to input-independent outputs. Cumulative averages, train mode, no gradients; left in eval."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    g = torch.Generator().manual_seed(SEED + 3)

    def like(t: Tensor) -> Tensor:
        if t.is_floating_point() and not torch.all((t == 0) | (t == 1)):
            return torch.randn(batch, *t.shape[1:], generator=g)
        return t[:1].expand(batch, *t.shape[1:]).clone()

    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches if bns else 0):
            if isinstance(inputs, dict):
                call(model, {k: like(v) for k, v in inputs.items()})
            elif isinstance(inputs, tuple):
                call(model, tuple(like(v) for v in inputs))
            else:
                call(model, like(inputs))
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    return model.eval()


def example_batch(*shape: int, seed: int = SEED) -> Tensor:
    """A standard-normal batch of ``(BATCH, *shape)``, seeded."""
    return torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(seed + 7))


def call(model: nn.Module, inputs: ExampleInputs) -> Any:
    """``model`` applied to example inputs of any of the three forms."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def graph_summary(example: ExampleInputs, model: nn.Module, *, elementwise: bool = False) -> Any:
    """What ``ChannelGraph(model, example)`` finds, comparable with ``==``: head, exclusions, groups with
    every member's channel pairs, and the count of Torch-Pruning's graph nodes by type; or the error's type.

    Element-wise nodes are left out of the count unless ``elementwise``: they pass channels through as they
    are, and their number may differ on an empty batch without changing a group (an empty tensor is
    contiguous, so ``.contiguous()`` copies nothing and adds no node).
    """
    import collections

    from prunelab.surgery import ChannelGraph

    try:
        graph = ChannelGraph(model, example)
    except Exception as exc:  # noqa: BLE001 - the kind of failure is what is compared
        return type(exc).__name__
    members = [
        [(m.name, m.kind, m.role, m.pairs, m.channel_map, m.dim) for m in g.members] for g in graph.groups
    ]
    nodes = collections.Counter(type(m).__name__ for m in graph.dg.module2node)
    if not elementwise:
        nodes.pop("_ElementWiseOp", None)
    return [graph.head, graph.excluded, [g.to_dict() for g in graph.groups], members, sorted(nodes.items())]


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


# --------------------------------------------------------------------------------------------------
# the constructs
# --------------------------------------------------------------------------------------------------


class PlainConvNet(nn.Module):
    """Plain conv-BN-ReLU stack, then flatten into a Linear head (one channel → H·W Linear inputs)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 16, stride=2), _cbr(16, 24, stride=2), _cbr(24, 32, stride=2))
        self.classifier = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class ResidualNet(nn.Module):
    """Residual addition: two basic blocks whose outputs are added to the stream (coupled channels)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.block1 = nn.Sequential(_cbr(16, 16), nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.block2 = nn.Sequential(_cbr(16, 12), nn.Conv2d(12, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = F.relu(x + self.block1(x))
        x = F.relu(x + self.block2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class PartialResidualNet(nn.Module):
    """Partial residual (timm's ReXNet): each block widens the stream; the input is added to the first
    channels of the block's output, which is then concatenated with the rest (``cat([y[:, :c] + x,
    y[:, c:]])``). Torch-Pruning 1.6.1's search for the channels coupled to the stream never ends here."""

    def __init__(self, widths: tuple[int, ...] = (16, 20, 24, 28, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.widths = widths
        self.stem = _cbr(3, widths[0])
        self.blocks = nn.ModuleList(
            nn.Sequential(
                _cbr(cin, 2 * cout, k=1), nn.Conv2d(2 * cout, cout, 1, bias=False), nn.BatchNorm2d(cout)
            )
            for cin, cout in itertools.pairwise(widths)
        )
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block, width in zip(self.blocks, self.widths, strict=False):
            y = block(x)
            x = torch.cat([y[:, :width] + x, y[:, width:]], dim=1)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DepthwiseSeparableNet(nn.Module):
    """Depthwise separable convs (MobileNet): a depthwise 3×3 (groups = channels) then a pointwise 1×1."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, stride=2)
        self.dw1 = _cbr(16, 16, groups=16)
        self.pw1 = _cbr(16, 32, k=1)
        self.dw2 = _cbr(32, 32, stride=2, groups=32)
        self.pw2 = _cbr(32, 48, k=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pw2(self.dw2(self.pw1(self.dw1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


class GroupedConvNet(nn.Module):
    """ResNeXt-style bottleneck: 1×1 reduce, a grouped 3×3 (groups=4, not depthwise), 1×1 expand, residual."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 32, stride=2)
        self.reduce = _cbr(32, 32, k=1)
        self.grouped = _cbr(32, 32, groups=4)
        self.expand = nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = F.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class DenseConcatNet(nn.Module):
    """DenseNet-style concatenation: each layer's output is concatenated onto the running features."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.layer1 = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3, 1, 1, bias=False))
        self.layer2 = nn.Sequential(nn.BatchNorm2d(24), nn.ReLU(), nn.Conv2d(24, 8, 3, 1, 1, bias=False))
        self.norm = nn.BatchNorm2d(32)
        self.transition = nn.Conv2d(32, 16, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.layer1(x)], 1)
        x = torch.cat([x, self.layer2(x)], 1)
        x = self.transition(F.relu(self.norm(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class GhostModule(nn.Module):
    """GhostNet module: ``cat(primary(x), cheap_depthwise(primary(x)))[:, :out]``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.out = cout
        init = (cout + 1) // 2
        self.primary = _cbr(cin, init, k=1)
        self.cheap = _cbr(init, init, groups=init)

    def forward(self, x: Tensor) -> Tensor:
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, : self.out]


class GhostNet(nn.Module):
    """Concat + slicing (GhostNet): a concatenation of a primary conv and a cheap depthwise op, then
    ``[:, :c]`` keeps the first ``c`` channels (here an odd ``c``, so the slice cuts into the cheap half)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, stride=2)
        self.ghost1 = GhostModule(16, 15)
        self.ghost2 = GhostModule(15, 24)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.ghost2(self.ghost1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class SplitNet(nn.Module):
    """torch.split with a fixed size (16) and torch.chunk(2) into two branches, each convolved,
    concatenated back (ShuffleNetV2-like without the shuffle). The sizes are constants of the code, so
    they cannot follow pruned widths: a pruned split/chunk input must keep its halves (Torch-Pruning
    1.6.1 prunes them unevenly and the pruned model fails)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 32, stride=2)
        self.left = _cbr(16, 16)
        self.right = _cbr(16, 16, k=1)
        self.mix = _cbr(32, 24, k=1)
        self.branch_a = _cbr(12, 12)
        self.branch_b = _cbr(12, 8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(20, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        a, b = torch.split(x, 16, dim=1)
        x = self.mix(torch.cat([self.left(a), self.right(b)], 1))
        a, b = torch.chunk(x, 2, dim=1)
        x = torch.cat([self.branch_a(a), self.branch_b(b)], 1)
        return self.fc(torch.flatten(self.pool(x), 1))


class SizedSplitNet(nn.Module):
    """torch.split into two branches with the sizes read from the consumers at run time
    (``[left.in_channels, right.in_channels]``), so the split follows the pruned widths; concatenated back."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 32, stride=2)
        self.left = _cbr(16, 16)
        self.right = _cbr(16, 12, k=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(28, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(self.stem(x), [self.left[0].in_channels, self.right[0].in_channels], dim=1)
        x = torch.cat([self.left(a), self.right(b)], 1)
        return self.fc(torch.flatten(self.pool(x), 1))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate: global pool → 1×1 reduce → ReLU → 1×1 expand → sigmoid, times x."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class SENet(nn.Module):
    """SE block: a sigmoid gate multiplies the feature map channel by channel (gate and map coupled)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, stride=2)
        self.conv = _cbr(16, 32)
        self.se = SqueezeExcite(32, 8)
        self.proj = _cbr(32, 24, k=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(self.se(self.conv(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class HeadFirstNet(nn.Module):
    """Head registered first: the classifier Linear is defined in ``__init__`` before the features, so
    "the last registered layer" is not the head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.head = nn.Linear(32, num_classes)
        self.features = nn.Sequential(_cbr(3, 16, stride=2), _cbr(16, 32, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


class ConvHeadNet(nn.Module):
    """SqueezeNet-style conv classifier: a 1×1 conv to the classes, ReLU, global pool; no Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 16, stride=2), _cbr(16, 32, stride=2))
        self.classifier = nn.Sequential(
            nn.Dropout(0.0), nn.Conv2d(32, num_classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


class TwoHeadNet(nn.Module):
    """Several outputs: one trunk, two Linear heads, returned as a tuple ``(logits, aux)``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 16, stride=2), _cbr(16, 32, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, num_classes)
        self.aux = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = torch.flatten(self.pool(self.features(x)), 1)
        return self.head(f), self.aux(f)


class DictOutputNet(nn.Module):
    """Dict output: ``{"logits": ..., "embedding": ...}``, the embedding read from an intermediate layer."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 16, stride=2), _cbr(16, 32, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Linear(32, 16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        e = self.embed(torch.flatten(self.pool(self.features(x)), 1))
        return {"logits": self.head(F.relu(e)), "embedding": e}


class TwoInputNet(nn.Module):
    """Multi-input: ``forward(x, y)`` with two image tensors, two stems, features added, one head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem_x = _cbr(3, 16, stride=2)
        self.stem_y = _cbr(1, 16, stride=2)
        self.body = _cbr(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        f = self.body(self.stem_x(x) + self.stem_y(y))
        return self.fc(torch.flatten(self.pool(f), 1))


class KeywordInputNet(nn.Module):
    """Keyword inputs: ``forward(image=..., mask=...)``, called with a dict of tensors; the mask gates the image."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 16, stride=2), _cbr(16, 32, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, image: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            image = image * mask
        return self.fc(torch.flatten(self.pool(self.features(image)), 1))


class TinyDecoder(nn.Module):
    """ConvTranspose2d: a conv encoder and a transposed-conv upsampling decoder back to a 3-channel image."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = _cbr(3, 16, stride=2)
        self.enc2 = _cbr(16, 32, stride=2)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(32, 24, 2, 2, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.up2 = nn.Sequential(nn.ConvTranspose2d(24, 16, 2, 2), nn.ReLU())
        self.out = nn.Conv2d(16, 3, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.up2(self.up1(self.enc2(self.enc1(x)))))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: depthwise 7×7 → permute to NHWC → LayerNorm(C) → Linear 4C → GELU → Linear C →
    permute back → layer scale (bare ``nn.Parameter`` of shape (C, 1, 1)) → residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(0.5 + torch.rand(dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + self.gamma * y


class ConvNeXtNet(nn.Module):
    """LayerNorm over channels (ConvNeXt): a patchify stem, channels-last LayerNorm, two ConvNeXt
    blocks, global pool, LayerNorm, Linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 4, 4)
        self.stem_norm = nn.LayerNorm(24)
        self.blocks = nn.Sequential(ConvNeXtBlock(24), ConvNeXtBlock(24))
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_norm(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.blocks(x)
        return self.head(self.norm(x.mean((2, 3))))


class BareParameterNet(nn.Module):
    """A bare ``nn.Parameter`` used directly in ``forward``: a per-channel scale and shift
    ``x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)`` between two convs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _cbr(3, 16, stride=2)
        self.scale = nn.Parameter(0.5 + torch.rand(16))
        self.shift = nn.Parameter(0.1 * torch.randn(16))
        self.conv2 = _cbr(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x) * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)
        return self.fc(torch.flatten(self.pool(self.conv2(x)), 1))


class GroupNormNet(nn.Module):
    """GroupNorm (8 groups over 16 and 32 channels): channel groups must stay divisible by the norm groups."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.gn1 = nn.GroupNorm(8, 16)
        self.conv2 = nn.Conv2d(16, 32, 3, 2, 1, bias=False)
        self.gn2 = nn.GroupNorm(8, 32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ChannelAffine(nn.Module):
    """A custom layer with its own per-channel parameters (``weight``, ``bias`` of shape (C,)):
    ``x * weight + bias`` per channel. Not a torch layer type, so the surgery needs an extension hook
    (a ``ChannelMappingLayer`` implementation or a registered pruner) to resize it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.5 + torch.rand(channels))
        self.bias = nn.Parameter(0.1 * torch.randn(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class CustomLayerNet(nn.Module):
    """Custom layer with a per-channel parameter (:class:`ChannelAffine`) between two convs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 2, 1)
        self.affine = ChannelAffine(16)
        self.conv2 = _cbr(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.affine(self.conv1(x)))
        return self.fc(torch.flatten(self.pool(self.conv2(x)), 1))


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle: view (N, g, C/g, H, W) → transpose → flatten back."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ChannelShuffleNet(nn.Module):
    """Channel shuffle (ShuffleNet): a grouped 1×1 conv, a view/transpose channel permutation, a second
    grouped conv. The permutation interleaves the channel groups; the graph cannot follow it."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbr(3, 16, stride=2)
        self.gconv1 = _cbr(16, 32, k=1, groups=2)
        self.gconv2 = _cbr(32, 32, k=1, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.gconv2(channel_shuffle(self.gconv1(self.stem(x)), 2))
        return self.fc(torch.flatten(self.pool(x), 1))


class MLP(nn.Module):
    """Linear-only MLP over a flattened 1×16×16 input (no convolution at all)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(256, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------


def _make(cls: type[nn.Module], inputs: Callable[[], ExampleInputs]) -> Callable[[], tuple[nn.Module, Any]]:
    def builder() -> tuple[nn.Module, ExampleInputs]:
        torch.manual_seed(SEED)
        model = randomize_norms(cls())
        example = inputs()
        return calibrate_bn(model, example), example

    builder.__doc__ = cls.__doc__
    builder.__name__ = f"build_{cls.__name__}"
    return builder


def _image(size: int = 32) -> Callable[[], Tensor]:
    return lambda: example_batch(3, size, size)


CONSTRUCTS: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "plain_flatten_linear": _make(PlainConvNet, _image()),
    "residual_add": _make(ResidualNet, _image(16)),
    "depthwise_separable": _make(DepthwiseSeparableNet, _image()),
    "grouped_conv": _make(GroupedConvNet, _image()),
    "concat_dense": _make(DenseConcatNet, _image()),
    "concat_slice_ghost": _make(GhostNet, _image()),
    "split_sized": _make(SizedSplitNet, _image()),
    "split_chunk": _make(SplitNet, _image()),
    "squeeze_excite": _make(SENet, _image()),
    "head_registered_first": _make(HeadFirstNet, _image()),
    "conv_classifier_head": _make(ConvHeadNet, _image()),
    "tuple_outputs": _make(TwoHeadNet, _image()),
    "dict_output": _make(DictOutputNet, _image()),
    "multi_input": _make(TwoInputNet, lambda: (example_batch(3, 32, 32), example_batch(1, 32, 32, seed=1))),
    "keyword_inputs": _make(
        KeywordInputNet,
        lambda: {"image": example_batch(3, 32, 32), "mask": (example_batch(1, 32, 32, seed=2) > 0).float()},
    ),
    "conv_transpose_decoder": _make(TinyDecoder, _image()),
    "layernorm_convnext": _make(ConvNeXtNet, _image()),
    "bare_parameter": _make(BareParameterNet, _image()),
    "group_norm": _make(GroupNormNet, _image()),
    "custom_layer": _make(CustomLayerNet, _image()),
    "channel_shuffle": _make(ChannelShuffleNet, _image()),
    "linear_mlp": _make(MLP, lambda: example_batch(1, 16, 16)),
    "partial_residual": _make(PartialResidualNet, _image(16)),
}
"""Construct name → builder of ``(model in eval mode, example inputs)``."""

HEADS: dict[str, tuple[str, ...]] = {
    "plain_flatten_linear": ("classifier",),
    "residual_add": ("fc",),
    "depthwise_separable": ("fc",),
    "grouped_conv": ("fc",),
    "concat_dense": ("fc",),
    "concat_slice_ghost": ("fc",),
    "split_sized": ("fc",),
    "split_chunk": ("fc",),
    "squeeze_excite": ("fc",),
    "head_registered_first": ("head",),
    "conv_classifier_head": ("classifier.1",),
    "tuple_outputs": ("head", "aux"),
    "dict_output": ("head", "embed"),
    "multi_input": ("fc",),
    "keyword_inputs": ("fc",),
    "conv_transpose_decoder": ("out",),
    "layernorm_convnext": ("head",),
    "bare_parameter": ("fc",),
    "group_norm": ("fc",),
    "custom_layer": ("fc",),
    "channel_shuffle": ("fc",),
    "linear_mlp": ("fc3",),
    "partial_residual": ("fc",),
}
"""Construct name → the layers whose outputs are model outputs and stay (the first one is the classifier)."""

REFUSED_WHY: dict[str, str] = {
    "concat_slice_ghost": (
        "the slice [:, :c] keeps a constant number of channels; Torch-Pruning 1.6.1 prunes the "
        "concatenation and the consumer then reads fewer channels than it expects (forward fails)"
    ),
    "split_sized": (
        "Torch-Pruning 1.6.1 maps the pruned channels of the split input to the wrong branch (the stem "
        "loses channels of the first part, the second consumer's inputs are pruned): runs, but differs (0.33)"
    ),
    "split_chunk": (
        "torch.split(x, 16) / x.chunk(2) re-split the pruned tensor by constants of the code; "
        "Torch-Pruning 1.6.1 prunes the parts unevenly and the consumers get the wrong widths (forward fails)"
    ),
    "channel_shuffle": (
        "Torch-Pruning 1.6.1 traces the view/transpose permutation as plain reshapes: the pruned model "
        "runs but differs from the original with the removed channels zeroed (max |diff| 0.31)"
    ),
    "partial_residual": (
        "Torch-Pruning 1.6.1's search for the channels coupled to the stream keeps revisiting the slice, "
        "add and concatenation with new channel indices and never ends (MagnitudePruner does not return)"
    ),
}
"""Construct name → why Torch-Pruning 1.6.1 cannot prune it (measured by ``tests/zoo/test_constructs.py``)."""

REFUSED: set[str] = set(REFUSED_WHY)
"""Constructs whose channel groups Torch-Pruning 1.6.1 itself cannot handle: expected one-line refusal."""

HANGS: set[str] = {"partial_residual"}
"""The REFUSED constructs on which Torch-Pruning 1.6.1's group search does not end: its own pruner is not run
on them (it would not return); ``tests/zoo/test_constructs.py`` shows the search growing instead."""

NORM_STATISTICS: set[str] = {"layernorm_convnext", "group_norm"}
"""Constructs that Torch-Pruning prunes consistently (the pruned model runs, shapes kept) but whose
pruned model cannot equal the original with the removed channels zeroed: LayerNorm over channels and
GroupNorm compute their mean and variance over the channels, so removing a channel changes the
statistics of the ones that stay (measured max |diff| 0.32 and 0.09). An equivalence check for them needs
a reference that leaves the removed channels out of the statistics, not one that zeroes them."""


def build(name: str) -> tuple[nn.Module, Any]:
    """``CONSTRUCTS[name]()``."""
    return CONSTRUCTS[name]()
