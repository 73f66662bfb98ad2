"""The YOLOv8-style head's own parts on hand-made cases whose answer is known: task-aligned
assignment (TOOD) and the box distributions (GFL). That it learns, exports and keeps the head
contract is tests/test_heads_conformance.py's."""

from __future__ import annotations

import torch

from detection.models.heads.yolov8 import cell_centres, decode_boxes, task_aligned_assign


def _points() -> torch.Tensor:
    # a 4 x 4 grid of stride 8 on a 32 px image: centres at 4, 12, 20, 28
    points, _ = cell_centres([torch.zeros(1, 1, 4, 4)], [8])
    return points


def test_positives_are_the_best_aligned_points_inside_the_box() -> None:
    points = _points()
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])  # holds the four points (4|12, 4|12)
    predicted = box.expand(len(points), 4).clone()
    predicted[5] = torch.tensor([2.0, 2.0, 16.0, 16.0])  # point (12, 12) predicts a worse box
    scores = torch.full((len(points), 3), 0.5)
    scores[0, 1] = 0.9  # point (4, 4) is the most confident of the box's class
    matched, boxes, targets = task_aligned_assign(scores, predicted, points, box, torch.tensor([1]), topk=2)
    inside = {0, 1, 4, 5}
    positives = set(torch.where(matched >= 0)[0].tolist())
    # the two best-aligned of the four inside points: (4, 4) by its score; then IoU^6 decides
    # between the three points of IoU 1, and the worse box of point 5 is ranked last
    assert len(positives) == 2 and positives <= inside and 0 in positives and 5 not in positives
    assert torch.equal(boxes[matched >= 0], box.expand(2, 4))
    assert (targets[:, [0, 2]] == 0).all() and (targets[matched < 0] == 0).all()
    # TOOD's normalisation: the box's best-aligned positive gets the box's best IoU (1 here)
    assert torch.isclose(targets[0, 1], torch.tensor(1.0))
    assert 0 < float(targets[list(positives - {0})[0], 1]) < 1


def test_a_point_inside_two_boxes_goes_to_the_one_it_overlaps_most() -> None:
    points = _points()
    first = torch.tensor([0.0, 0.0, 16.0, 16.0])
    second = torch.tensor([8.0, 8.0, 32.0, 32.0])  # both hold the point (12, 12), index 5
    predicted = first.expand(len(points), 4).clone()
    predicted[5] = torch.tensor([9.0, 9.0, 31.0, 31.0])  # its prediction overlaps the second box most
    scores = torch.full((len(points), 2), 0.5)
    matched, _, targets = task_aligned_assign(
        scores, predicted, points, torch.stack([first, second]), torch.tensor([0, 1]), topk=16
    )
    assert int(matched[5]) == 1 and targets[5, 0] == 0 and targets[5, 1] > 0
    assert int(matched[0]) == 0  # (4, 4) is inside the first box only
    assert (matched[[3, 12]] == -1).all()  # (28, 4) and (4, 28) lie in neither


def test_an_image_without_boxes_is_all_negatives() -> None:
    points = _points()
    matched, boxes, targets = task_aligned_assign(
        torch.rand(len(points), 4),
        torch.rand(len(points), 4),
        points,
        torch.zeros(0, 4),
        torch.zeros(0).long(),
    )
    assert (matched == -1).all() and not boxes.any() and not targets.any()


def test_box_distributions_decode_to_their_expected_distances() -> None:
    reg_max = 4
    logits = torch.full((1, 4 * reg_max), -1e4)
    for side, bin_index in enumerate((0, 1, 2, 3)):  # all mass on one bin per side
        logits[0, side * reg_max + bin_index] = 0.0
    box = decode_boxes(logits, torch.tensor([[20.0, 20.0]]), torch.tensor([8.0]))
    # left 0, top 1, right 2, bottom 3 strides of 8 px from the point (20, 20)
    assert torch.allclose(box, torch.tensor([[20.0, 12.0, 36.0, 44.0]]))
    even = decode_boxes(torch.zeros(1, 4 * reg_max), torch.tensor([[0.0, 0.0]]), torch.tensor([1.0]))
    assert torch.allclose(even, torch.tensor([[-1.5, -1.5, 1.5, 1.5]]))  # the mean of bins 0..3
