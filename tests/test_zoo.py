"""The shipped models load from the package, frozen, with the shapes and classes their README states."""
import json

import torch

from eval.features import DomainClassifier
import teachers
from teachers.zoo import zoo_path


def test_shipped_mnist_teachers_load_and_denoise():
    for name, classes in (("mnist_uncond", None), ("mnist_cond", 10)):
        teacher = teachers.load(zoo_path(name))
        assert teacher.shape == (1, 28, 28) and teacher.num_classes == classes and teacher.prediction_type == "v_prediction"
        assert not any(p.requires_grad for p in teacher.parameters())
        x0 = torch.zeros(2, 1, 28, 28) - 1  # an empty (black) image
        cond = None if classes is None else torch.tensor([0, 1])
        with torch.no_grad():
            out = teacher(x0 + 0.05 * torch.randn_like(x0), torch.tensor([0.05, 0.05]), cond)
        assert (out - x0).abs().mean() < 0.05  # a trained denoiser removes a little noise from a blank image


def test_shipped_classifier_reports_its_held_out_accuracy():
    path = zoo_path("mnist_classifier")
    model = DomainClassifier.from_pretrained(path)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 128)
    assert json.loads((path / "accuracy.json").read_text())["test_accuracy"] > 0.9
