"""The students: output shapes, the ResNet8 layout, argument checks, and that a teacher round runs on them."""

from __future__ import annotations

import pytest
import torch

import dynaloss
from dynaloss.harness.models import MNIST1DCNN, DigitsMLP, ResMLP, ResNet8


@pytest.mark.parametrize(
    ("model", "input_shape", "classes"),
    [
        (MNIST1DCNN(), (7, 1, 40), 10),
        (MNIST1DCNN(num_classes=4, channels=8, length=33), (3, 1, 33), 4),
        (DigitsMLP(), (5, 1, 8, 8), 10),
        (DigitsMLP(), (5, 64), 10),
        (ResMLP(), (5, 1, 40), 10),
        (ResMLP(num_classes=3, in_features=64, width=8, blocks=1), (4, 1, 8, 8), 3),
        (ResNet8(), (2, 3, 32, 32), 10),
        (ResNet8(num_classes=100), (2, 3, 32, 32), 100),
    ],
)
def test_output_is_batch_by_classes(model: torch.nn.Module, input_shape: tuple[int, ...], classes: int) -> None:
    assert model(torch.randn(input_shape)).shape == (input_shape[0], classes)


def test_resnet8_is_the_research_codes_wide_layout() -> None:
    model = ResNet8()
    assert [model.layer1.conv1.out_channels, model.layer2.conv1.out_channels, model.layer3.conv1.out_channels] == [
        64,
        128,
        256,
    ]
    assert [model.layer1.conv1.stride, model.layer2.conv1.stride, model.layer3.conv1.stride] == [(1, 1), (2, 2), (2, 2)]
    assert model.linear.in_features == 1024
    assert 1_200_000 < sum(p.numel() for p in model.parameters()) < 1_250_000


def test_resmlp_is_a_few_thousand_parameters_with_residual_batchnorm_blocks() -> None:
    model = ResMLP(in_features=40)
    assert 5_000 < sum(p.numel() for p in model.parameters()) < 10_000
    assert len(model.blocks) == 2 and all(isinstance(block[0], torch.nn.BatchNorm1d) for block in model.blocks)
    with torch.no_grad():  # a zeroed block is the identity: the shortcut carries the stream past it
        for block in model.blocks:
            block[2].weight.zero_()
            block[2].bias.zero_()
        x = torch.randn(6, 1, 40)
        assert torch.equal(model(x), model.head(model.stem(x)))


def test_resnet8_rejects_other_image_sizes() -> None:
    with pytest.raises(ValueError, match="32x32"):
        ResNet8()(torch.randn(1, 3, 28, 28))


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: MNIST1DCNN(num_classes=1), ValueError, "num_classes must be >= 2, got 1"),
        (lambda: MNIST1DCNN(channels=0), ValueError, "channels"),
        (lambda: DigitsMLP(hidden=2.0), TypeError, "hidden"),  # type: ignore[arg-type]
        (lambda: ResNet8(num_classes="10"), TypeError, "num_classes"),  # type: ignore[arg-type]
        (lambda: ResMLP(blocks=0), ValueError, "blocks"),
    ],
)
def test_bad_arguments_raise_naming_the_value(build, error: type, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        build()


def test_a_paper_round_advances_the_mnist1d_student() -> None:
    torch.manual_seed(0)
    student = MNIST1DCNN()
    before = [p.detach().clone() for p in student.parameters()]
    teacher = dynaloss.Teacher(dynaloss.PairwiseDLN(10), steps=2, student_lr=0.1, mode="paper")
    batches = iter([(torch.randn(4, 1, 40), torch.randint(10, (4,)))] * 4)
    record = teacher.step(student, batches, iter([(torch.randn(6, 1, 40), torch.randint(10, (6,)))]))
    assert not record.skipped and record.student_steps == 4
    assert any(not torch.equal(b, p) for b, p in zip(before, student.parameters(), strict=True))
