"""The segmentation-models-pytorch adapter: PSPNet with an auxiliary segmentation head, its DLN objective, the loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

smp = pytest.importorskip("segmentation_models_pytorch", exc_type=ImportError)

from dynaloss import Teacher, hypergradient  # noqa: E402
from dynaloss.harness.synthetic import SyntheticShapes  # noqa: E402
from dynaloss.integrations.smp import (  # noqa: E402
    PSPNetAux,
    PSPNetCELoss,
    PSPNetDLNLoss,
    PSPNetTrainer,
    VOCSegmentation,
    confusion_matrix,
    mean_iou,
)
from dynaloss.integrations.teaching import TeachingConfig  # noqa: E402

NUM_CLASSES = 4
SIZE = 32


def tiny_pspnet(seed: int = 0) -> PSPNetAux:
    """The paper's layout (depth 5, output stride 8, aux on layer3) on timm's tiny test ResNet."""
    torch.manual_seed(seed)
    return PSPNetAux(NUM_CLASSES, encoder_name="tu-test_resnet", psp_out_channels=16, aux_channels=16)


def shapes(length: int = 24, seed: int = 0) -> SyntheticShapes:
    return SyntheticShapes(length, size=SIZE, num_classes=NUM_CLASSES, ignore_border=2, seed=seed)


def batch_of(dataset: SyntheticShapes, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = zip(*(dataset[i] for i in indices))
    return torch.stack(images), torch.stack(masks)


# ---------------------------------------------------------------------------------------------- the model
def test_default_layout_is_the_papers_dilated_resnet50_with_aux_on_layer3():
    model = PSPNetAux(21)
    encoder = model.pspnet.encoder
    assert encoder.output_stride == 8 and len(encoder.out_channels) == 6  # depth 5, dilated
    assert model.aux_head[0].in_channels == 1024  # layer3 of ResNet-50
    assert model.pspnet.decoder.psp.blocks[0].pool[1][0].in_channels == 2048  # the pyramid sits on layer4


def test_both_heads_predict_every_pixel_in_train_and_eval():
    model = tiny_pspnet()
    x = torch.rand(2, 3, SIZE, SIZE)
    for mode in (True, False):
        out = model.train(mode)(x)
        assert out.main.shape == out.aux.shape == (2, NUM_CLASSES, SIZE, SIZE)
        assert not torch.equal(out.main, out.aux)


# ---------------------------------------------------------------------------------------------- the objective
def test_objectives_are_main_plus_0_4_aux():
    torch.manual_seed(0)
    main, aux = torch.randn(2, NUM_CLASSES, 8, 8), torch.randn(2, NUM_CLASSES, 8, 8)
    target = torch.randint(NUM_CLASSES, (2, 8, 8))
    target[0, 0] = 255
    ce = PSPNetCELoss(NUM_CLASSES)((main, aux), target)
    expected = F.cross_entropy(main, target, ignore_index=255) + 0.4 * F.cross_entropy(aux, target, ignore_index=255)
    torch.testing.assert_close(ce, expected)

    objective = PSPNetDLNLoss(NUM_CLASSES, max_pixels=None)
    dln = objective.dln
    torch.testing.assert_close(objective((main, aux), target), dln(main, target) + 0.4 * dln(aux, target))
    assert [n for n, _ in objective.named_parameters()] == [n for n, _ in dln.named_parameters(prefix="dln")]


def test_pixel_subsampling_is_unbiased_for_the_objective():
    torch.manual_seed(0)
    main, aux = torch.randn(2, NUM_CLASSES, 16, 16), torch.randn(2, NUM_CLASSES, 16, 16)
    target = torch.randint(NUM_CLASSES, (2, 16, 16))
    full = PSPNetDLNLoss(NUM_CLASSES, max_pixels=None)
    sampled = PSPNetDLNLoss(NUM_CLASSES, max_pixels=32)
    sampled.dln.load_state_dict(full.dln.state_dict())
    with torch.no_grad():
        estimates = torch.stack([sampled((main, aux), target) for _ in range(200)])
        exact = full((main, aux), target)
    assert abs(float(estimates.mean() - exact)) < 4 * float(estimates.std()) / 200**0.5


# ---------------------------------------------------------------------------------------------- teaching
def test_teacher_round_changes_the_dln_with_finite_hypergradients():
    model = tiny_pspnet()
    data = shapes()
    objective, val_loss = PSPNetDLNLoss(NUM_CLASSES), PSPNetCELoss(NUM_CLASSES)
    grads = hypergradient(
        model,
        objective,
        [batch_of(data, [0, 1]), batch_of(data, [2, 3])],
        batch_of(data, list(range(4, 12))),
        student_lr=0.01,
        val_loss=val_loss,
    )
    flat = torch.cat([g.flatten() for g in grads.values()])
    assert torch.isfinite(flat).all() and flat.abs().sum() > 0

    before = [p.detach().clone() for p in objective.parameters()]
    teacher = Teacher(objective, steps=2, student_lr=0.01, mode="paper", val_loss=val_loss)
    student_before = [p.detach().clone() for p in model.parameters()]
    train = iter([batch_of(data, [i, i + 1]) for i in range(0, 8, 2)])
    record = teacher.step(model, train, iter([batch_of(data, list(range(12, 20)))]))
    assert not record.skipped, record.reason
    assert record.student_steps == 4
    assert any(not torch.equal(p, b) for p, b in zip(objective.parameters(), before))
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), student_before))  # paper mode trains it


# ---------------------------------------------------------------------------------------------- the loop
def test_short_training_runs_teaches_and_evaluates():
    trainer = PSPNetTrainer(
        tiny_pspnet(), shapes(), total_steps=6, teaching=TeachingConfig(every=3, steps=2), batch_size=4, lr=0.05
    )
    assert trainer.teacher.student_optimizer is trainer.optimizer  # the rounds unroll the trainer's own SGD
    dln_before = [p.detach().clone() for p in trainer.objective.parameters()]
    records = trainer.fit()
    assert [r["step"] for r in records] == [3, 6] and not records[0]["skipped"]
    # the poly schedule's rate is 0 at its end: that round learns nothing, and is skipped (issue 22)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0 and "learned nothing" in records[1]["reason"]
    assert any(not torch.equal(p, b) for p, b in zip(trainer.objective.parameters(), dln_before))
    metrics = trainer.evaluate(shapes(8, seed=5))
    assert 0.0 <= metrics["miou"] <= 1.0 and len(metrics["per_class_iou"]) == NUM_CLASSES
    assert trainer.model.training  # evaluation restores the mode


def test_paper_rounds_step_the_trainers_sgd_and_its_momentum():
    """A 'paper' round unrolls the trainer's SGD (momentum 0.9, weight decay, the poly lr of the moment) and
    writes its momentum buffers back along with the student (their values are the core tests' business)."""
    trainer = PSPNetTrainer(
        tiny_pspnet(), shapes(), total_steps=4, teaching=TeachingConfig(every=2, steps=1, mode="paper"), batch_size=4
    )
    trainer.fit(until=2)  # two real steps: momentum buffers exist, the lr has decayed
    assert trainer.optimizer.param_groups[0]["lr"] < 0.01
    before = {p: trainer.optimizer.state[p]["momentum_buffer"].clone() for p in trainer.model.parameters()}
    record = trainer._teach()
    assert not record.skipped and record.student_steps == 2
    assert all(not torch.equal(trainer.optimizer.state[p]["momentum_buffer"], b) for p, b in before.items())


def test_cross_entropy_arm_has_no_teacher():
    trainer = PSPNetTrainer(tiny_pspnet(), shapes(), total_steps=2, loss="ce", batch_size=4)
    assert trainer.teacher is None and trainer.fit() == []
    assert trainer.step == 2


def test_resume_continues_exactly(tmp_path):
    def fresh() -> PSPNetTrainer:
        return PSPNetTrainer(
            tiny_pspnet(), shapes(), total_steps=4, teaching=TeachingConfig(every=2, steps=2), batch_size=4, lr=0.05
        )

    straight = fresh()
    torch.manual_seed(1)
    straight.fit()

    first = fresh()
    torch.manual_seed(1)
    first.fit(until=2)
    path = first.save(tmp_path / "ckpt.pt")
    second = fresh()
    second.load(path)
    second.fit()

    assert second.step == 4 and second.teacher.rounds == straight.teacher.rounds == 2
    assert second.scheduler.state_dict() == straight.scheduler.state_dict()  # PolynomialLR resumed where it was
    assert second.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.objective.parameters(), second.objective.parameters()):
        assert torch.equal(a, b)
    timeless = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert timeless(second.records) == timeless(straight.records)


def test_the_poly_schedule_is_torchs_polynomial_lr_with_the_old_closed_form_rates():
    total = 6
    trainer = PSPNetTrainer(tiny_pspnet(), shapes(), total_steps=total, loss="ce", batch_size=4, lr=0.05)
    assert isinstance(trainer.scheduler, torch.optim.lr_scheduler.PolynomialLR)
    rates = [trainer.optimizer.param_groups[0]["lr"]]
    for step in range(1, total + 1):
        trainer.fit(until=step)
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    # what the trainer's LambdaLR computed before: lr * (1 - min(s, T) / T) ** 0.9, in closed form
    closed_form = [0.05 * (1 - min(s, total) / total) ** 0.9 for s in range(total + 1)]
    assert rates == pytest.approx(closed_form, rel=1e-12, abs=1e-15)
    assert rates[-1] == 0.0


def test_the_budget_is_total_steps_and_steps_is_a_deprecated_property():
    with pytest.raises(TypeError, match="steps"):
        PSPNetTrainer(tiny_pspnet(), shapes(), steps=2, loss="ce", batch_size=4)
    trainer = PSPNetTrainer(tiny_pspnet(), shapes(), total_steps=2, loss="ce", batch_size=4)
    assert trainer.total_steps == 2 and trainer.fit() == [] and trainer.step == 2
    with pytest.warns(DeprecationWarning, match="PSPNetTrainer.steps is deprecated, use total_steps"):
        assert trainer.steps == 2
    with pytest.raises(TypeError, match="missing the keyword argument total_steps"):
        PSPNetTrainer(tiny_pspnet(), shapes(), loss="ce")


# ---------------------------------------------------------------------------------------------- metrics
def test_mean_iou_on_a_hand_built_case():
    prediction = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    target = torch.tensor([[0, 1, 1, 1], [2, 2, 255, 255]])
    confusion = confusion_matrix(prediction, target, 3)
    assert confusion.tolist() == [[1, 0, 0], [1, 2, 0], [0, 0, 2]]
    miou, per_class = mean_iou(confusion)
    assert per_class.tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    assert miou == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert mean_iou(confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 2), 3))[1][1:].isnan().all()


def independent_miou(predictions, targets, num_classes, ignore_index=255):
    """Data-set mIoU written out pixel by pixel in Python: per class, |pred & true| / |pred | true| over the
    counted pixels of every image; classes absent from both are left out of the mean."""
    inter, union = [0] * num_classes, [0] * num_classes
    for prediction, target in zip(predictions, targets):
        for p, t in zip(prediction.flatten().tolist(), target.flatten().tolist()):
            if t == ignore_index:
                continue
            for c in range(num_classes):
                inter[c] += p == c and t == c
                union[c] += p == c or t == c
    present = [inter[c] / union[c] for c in range(num_classes) if union[c]]
    return sum(present) / len(present), [inter[c] / union[c] if union[c] else None for c in range(num_classes)]


def test_mean_iou_over_batches_equals_an_independent_computation():
    generator = torch.Generator().manual_seed(0)
    num_classes = 5  # class 4 appears in neither prediction nor target: it is left out
    predictions = [torch.randint(4, (3, 7, 9), generator=generator) for _ in range(3)]
    targets = [torch.randint(4, (3, 7, 9), generator=generator) for _ in range(3)]
    for target in targets:
        target[torch.rand(target.shape, generator=generator) < 0.2] = 255
    confusion = sum(confusion_matrix(p, t, num_classes) for p, t in zip(predictions, targets))
    miou, per_class = mean_iou(confusion)
    expected_miou, expected = independent_miou(predictions, targets, num_classes)
    assert miou == pytest.approx(expected_miou, rel=1e-12)
    assert per_class[:4].tolist() == pytest.approx(expected[:4], rel=1e-12) and per_class[4].isnan()


def test_confusion_matrix_refuses_classes_that_smp_get_stats_drops():
    prediction, target = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 7, 2, 255]])
    with pytest.raises(ValueError, match=r"target holds classes outside \[0, 4\)"):
        confusion_matrix(prediction, target, 4)
    # why the counting is ours: smp's get_stats drops the 7 without a word (its false negatives miss that pixel)
    tp, fp, fn, _ = smp.metrics.get_stats(prediction, target, "multiclass", ignore_index=255, num_classes=4)
    assert int(tp.sum() + fn.sum()) == 2  # of the 3 counted pixels


def test_evaluate_equals_an_independent_computation_on_the_models_predictions():
    trainer = PSPNetTrainer(tiny_pspnet(), shapes(), total_steps=1, loss="ce", batch_size=4)
    val = shapes(6, seed=5)
    metrics = trainer.evaluate(val, batch_size=4)
    with torch.no_grad():
        trainer.model.eval()
        predictions = [trainer.model(batch_of(val, [i])[0]).main.argmax(1) for i in range(len(val))]
        trainer.model.train()
    targets = [batch_of(val, [i])[1] for i in range(len(val))]
    expected_miou, expected = independent_miou(predictions, targets, NUM_CLASSES)
    assert metrics["miou"] == pytest.approx(expected_miou, rel=1e-12)
    assert [None if v != v else v for v in metrics["per_class_iou"]] == pytest.approx(expected, rel=1e-12)
    counted = [(p == t)[t != 255] for p, t in zip(predictions, targets)]
    accuracy = sum(int(c.sum()) for c in counted) / sum(c.numel() for c in counted)
    assert metrics["pixel_accuracy"] == pytest.approx(accuracy, rel=1e-12)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_raises_naming_the_value(tmp_path):
    model = tiny_pspnet()
    with pytest.raises(ValueError, match=r"divisible by the output stride 8, got 36x32; pad or crop to 40x32"):
        model(torch.rand(1, 3, 36, 32))
    with pytest.raises(ValueError, match=r"x must be \(B, 3, H, W\), got shape \(1, 1, 32, 32\)"):
        model(torch.rand(1, 1, 32, 32))
    outputs = model(torch.rand(2, 3, SIZE, SIZE))
    for loss in (PSPNetDLNLoss(NUM_CLASSES), PSPNetCELoss(NUM_CLASSES)):
        with pytest.raises(
            ValueError, match=r"masks must be \(B, H, W\) = \(2, 32, 32\).*got masks of shape \(2, 16, 16\)"
        ):
            loss(outputs, torch.zeros(2, 16, 16, dtype=torch.long))
        bad = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
        bad[0, 0, 0] = 7
        with pytest.raises(ValueError, match=r"outside \[0, 4\).*max 7.*is num_classes=4 right"):
            loss(outputs, bad)
        with pytest.raises(TypeError, match="integer class indices"):
            loss(outputs, torch.zeros(2, SIZE, SIZE))
        with pytest.raises(TypeError, match=r"outputs must be \(main, aux\)"):
            loss(outputs.main, torch.zeros(2, SIZE, SIZE, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits must be \(B, 5, H, W\)"):
        PSPNetCELoss(5)(outputs, torch.zeros(2, SIZE, SIZE, dtype=torch.long))
    with pytest.raises(ValueError, match="is not a VOC 2012 directory"):
        VOCSegmentation(tmp_path / "VOC2012")
    with pytest.raises(ValueError, match="loss must be one of"):
        PSPNetTrainer(model, shapes(), total_steps=2, loss="dice")
    with pytest.raises(TypeError, match="model must be a PSPNetAux"):
        PSPNetTrainer(model.pspnet, shapes(), total_steps=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"until must be in \[0, 2\]"):
        PSPNetTrainer(model, shapes(), total_steps=2, loss="ce").fit(until=3)
    with pytest.raises(ValueError, match="does not exist"):
        PSPNetTrainer(model, shapes(), total_steps=2, loss="ce").load(tmp_path / "missing.pt")


def test_voc_directory_is_read_and_cropped(tmp_path):
    from PIL import Image

    base = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    Image.fromarray(torch.randint(0, 255, (20, 30, 3), dtype=torch.uint8).numpy()).save(base / "JPEGImages" / "a.jpg")
    mask = torch.zeros(20, 30, dtype=torch.uint8)
    mask[5:10, 5:10] = 3
    Image.fromarray(mask.numpy(), mode="L").save(base / "SegmentationClass" / "a.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    image, target = VOCSegmentation(tmp_path, "val", crop=24)[0]
    assert image.shape == (3, 24, 24) and target.shape == (24, 24)
    assert set(target.unique().tolist()) == {0, 3, 255}  # padding is ignored


def test_a_run_too_short_for_a_round_or_for_a_validation_batch_warns(caplog):
    # before: teaching silently did nothing
    import logging

    with caplog.at_level(logging.WARNING):
        PSPNetTrainer(tiny_pspnet(), shapes(), total_steps=2, teaching=TeachingConfig(every=3, steps=2), batch_size=4)
    assert "no teacher round will run" in caplog.text and "every=" in caplog.text
    caplog.clear()
    trainer = PSPNetTrainer(
        tiny_pspnet(), shapes(), total_steps=3, teaching=TeachingConfig(every=3, steps=2, val_batch=64), batch_size=4
    )
    with caplog.at_level(logging.WARNING):
        trainer.fit()
    assert "fewer than TeachingConfig(val_batch=64)" in caplog.text
