"""The third-party zoo: real torchvision and timm models (random weights, 10 classes, small inputs).

Every :class:`ZooModel` names its builder the way prunelab does (``torchvision:<name>``, ``timm:<name>``,
the same strings ``prunelab.save_pruned(builder=...)`` records), the constructor kwargs, the smallest
input shape it accepts (small keeps the stage fast) and its classifier head. ``build(entry)`` makes the
model through prunelab's model door (``prunelab.models.external``), seeded, with random BatchNorm affine
parameters and running statistics calibrated on random images (:func:`calibrate_bn`: otherwise the deep
nets' outputs collapse to constants), in eval mode, and returns ``(model, example_inputs)``.

``TP_FAILS`` records the models on which Torch-Pruning 1.6.1 itself fails, measured by
``benchmarks/zoo.py`` (see ``benchmarks/zoo.md``); prunelab must refuse those with one line and must
work on all others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

NUM_CLASSES = 10
BATCH = 2
SEED = 0


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry."""

    builder: str  # torchvision:<name> | timm:<name>
    input_shape: tuple[int, int, int]
    head: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    # module-name globs left dense by the unstructured checks (masks, relief, interspace), for the CI budget
    unstructured_exclude: tuple[str, ...] = ()
    # export format of the export -> verify check: ONNX (8-40 s a model here) on two, TorchScript on the rest
    export: str = "torchscript"

    @property
    def id(self) -> str:
        return self.builder.replace(":", "-")

    @property
    def library(self) -> str:
        return self.builder.split(":", 1)[0]


TV = "torchvision:"
TM = "timm:"

ZOO: list[ZooModel] = [
    # torchvision (16)
    ZooModel(TV + "resnet18", (3, 32, 32), "fc", export="onnx"),
    ZooModel(TV + "resnet50", (3, 32, 32), "fc"),
    ZooModel(TV + "resnext50_32x4d", (3, 32, 32), "fc"),
    ZooModel(TV + "mobilenet_v2", (3, 32, 32), "classifier.1"),
    ZooModel(TV + "mobilenet_v3_small", (3, 32, 32), "classifier.3"),
    ZooModel(TV + "mobilenet_v3_large", (3, 32, 32), "classifier.3"),
    ZooModel(TV + "efficientnet_b0", (3, 32, 32), "classifier.1"),
    ZooModel(TV + "densenet121", (3, 32, 32), "classifier"),
    ZooModel(TV + "shufflenet_v2_x0_5", (3, 32, 32), "fc"),
    ZooModel(TV + "regnet_x_400mf", (3, 32, 32), "fc"),
    ZooModel(TV + "regnet_y_400mf", (3, 32, 32), "fc"),
    ZooModel(TV + "convnext_tiny", (3, 32, 32), "classifier.2"),
    ZooModel(TV + "googlenet", (3, 32, 32), "fc", {"aux_logits": False, "init_weights": False}),
    ZooModel(TV + "squeezenet1_1", (3, 64, 64), "classifier.1"),
    ZooModel(TV + "mnasnet0_5", (3, 32, 32), "classifier.1"),
    # classifier.0 / classifier.3 are 25088x4096 and 4096x4096 (119M of the 129M weights): the unstructured
    # checks leave them dense (they cost 3 of the stage's minutes otherwise); the structured ones prune them.
    ZooModel(
        TV + "vgg11_bn", (3, 32, 32), "classifier.6", unstructured_exclude=("classifier.0", "classifier.3")
    ),
    # timm (12)
    ZooModel(TM + "resnet18", (3, 32, 32), "fc"),
    ZooModel(TM + "efficientnet_b0", (3, 32, 32), "classifier"),
    ZooModel(TM + "mobilenetv3_small_100", (3, 32, 32), "classifier"),
    ZooModel(TM + "regnetx_002", (3, 32, 32), "head.fc"),
    ZooModel(TM + "ghostnet_100", (3, 32, 32), "classifier"),
    ZooModel(TM + "convnext_atto", (3, 32, 32), "head.fc", export="onnx"),
    ZooModel(TM + "resnext26ts", (3, 32, 32), "head.fc"),
    ZooModel(TM + "dla34", (3, 32, 32), "fc"),
    ZooModel(TM + "cspresnet50", (3, 32, 32), "head.fc"),
    ZooModel(TM + "mixnet_s", (3, 32, 32), "classifier"),
    ZooModel(TM + "repvgg_a0", (3, 32, 32), "head.fc"),
    ZooModel(TM + "rexnet_100", (3, 32, 32), "head.fc"),
]
"""The zoo, torchvision first."""

BY_ID = {entry.id: entry for entry in ZOO}

TP_FAILS: dict[str, str] = {
    "torchvision:shufflenet_v2_x0_5": "ZeroDivisionError at the channel shuffle (view/transpose)",
    "timm:cspresnet50": "IndexError: index 256 is out of bounds for dimension 0 with size 256",
    "timm:mixnet_s": "RuntimeError: split_with_sizes expects split_sizes to sum exactly to ... (mixed kernel split)",
    "timm:rexnet_100": "hangs: its channel-group search (DependencyGraph.get_all_groups) does not end",
}
"""Zoo models Torch-Pruning 1.6.1's MagnitudePruner (L1, ratio 0.3, head ignored) cannot prune: its step or
the pruned model's forward fails, or it does not return. Measured by ``benchmarks/zoo.py``
(``benchmarks/results/zoo_*.json``)."""

TP_HANGS: set[str] = {"timm:rexnet_100"}
"""The TP_FAILS models on which Torch-Pruning's channel-group search does not end (more than 9 minutes
measured): prunelab stops that search (``prunelab.surgery.graph._bounded_search``), on no other model."""


KNOWN_DEFECTS: dict[str, dict[str, str]] = {}
"""Measured prunelab defects, reported and being fixed: ``{model key: {check: what}}`` (model key = the
builder, or ``construct:<name>``). The tests xfail on them and fail on anything else."""


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any BatchNorm layer is in the model (BN-scale selection needs some)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def randomize_bn(model: nn.Module, seed: int = SEED) -> nn.Module:
    """Random BatchNorm affine parameters and running statistics (BN-scale scores then differ)."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=g))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
                if module.running_mean is not None:
                    module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=g))
                    module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))
    return model


def calibrate_bn(
    model: nn.Module, input_shape: tuple[int, ...], batches: int = 2, batch: int = 16
) -> nn.Module:
    """Set every BatchNorm's running statistics to the statistics of its input on random images.

    With random weights and made-up running statistics, deep nets collapse: the activations drift until
    the output hardly depends on the input (mobilenet_v2's two samples differed by 1e-7 of the output
    scale), and an equivalence check of 1e-4 then proves nothing. Cumulative averages (``momentum=None``)
    over ``batches`` seeded batches, in train mode without gradients; the mode is left at eval.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    g = torch.Generator().manual_seed(SEED + 3)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, *input_shape, generator=g))
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    return model.eval()


def example_inputs(entry: ZooModel, batch: int = BATCH, seed: int = SEED) -> torch.Tensor:
    """A seeded standard-normal batch of the entry's input shape."""
    return torch.randn(batch, *entry.input_shape, generator=torch.Generator().manual_seed(seed + 7))


def build(entry: ZooModel) -> tuple[nn.Module, torch.Tensor]:
    """``(model in eval mode, example batch)`` for a zoo entry, built through prunelab's model door."""
    from prunelab.models.external import build_external

    torch.manual_seed(SEED)
    model = build_external(
        entry.builder, num_classes=NUM_CLASSES, input_shape=entry.input_shape, **entry.kwargs
    )
    randomize_bn(model)
    calibrate_bn(model, entry.input_shape)
    return model, example_inputs(entry)
