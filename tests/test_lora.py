"""LoRA students through peft: they start as the teacher, only the adapters train, and the export is both a fused
pipeline and LoRA weights that diffusers' load_lora_weights puts into the teacher's pipeline."""
import pytest
import torch
from conftest import compose_config, tiny_sd_denoiser
from diffusers import StableDiffusionPipeline
from omegaconf import OmegaConf

from distill.export import export_student, student_record
from distill.lora import add_lora
from teachers.latent import LORA_FILE
from distill.build import build_state
from teachers.errors import ConfigError
from teachers.mlp import MLPDenoiser

LORA = OmegaConf.create({"rank": 4, "alpha": 8, "targets": ["to_q", "to_k", "to_v", "to_out.0"], "fake_score": True})


def lora_state(teacher):
    optim = compose_config("train", ["run_dir=x"]).optim
    return build_state(teacher, optim, 0.9, lora=LORA)


def test_lora_networks_start_as_the_teacher_and_train_only_their_adapters():
    teacher = tiny_sd_denoiser()
    state = lora_state(teacher)
    cond = teacher.encode_condition(["a seven", "number two"])
    x, sigma = torch.randn(2, *teacher.shape), torch.tensor([2.0, 0.3])
    with torch.no_grad():
        torch.testing.assert_close(state.student(x, sigma, cond), teacher(x, sigma, cond))
    for network, optimizer in ((state.student, state.student_optimizer), (state.fake_score, state.fake_optimizer)):
        updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
        names = {name for name, p in network.named_parameters() if id(p) in updated}
        assert names and all("lora_" in name for name in names)


def test_lora_on_a_network_without_the_targets_is_refused():
    with pytest.raises(ConfigError, match=r"lora.targets \['to_x'\] match no layer"):
        add_lora(tiny_sd_denoiser(), OmegaConf.merge(LORA, {"targets": ["to_x"]}))
    with pytest.raises(ConfigError, match="MLPDenoiser has no diffusers network"):
        add_lora(MLPDenoiser(dim=2, hidden_dim=8, num_layers=1, emb_dim=4), LORA)


def test_lora_export_is_a_fused_pipeline_and_loadable_lora_weights(tmp_path):
    teacher = tiny_sd_denoiser()
    teacher.save_pretrained(tmp_path / "teacher")
    state = lora_state(teacher)
    with torch.no_grad():  # stand-in for training: every adapter weight moves
        for name, p in state.student.named_parameters():
            if "lora_" in name:
                p.add_(0.05 * torch.randn_like(p))
    export_student(state.student, None, tmp_path / "student", student_record([teacher.sigma_max]))
    assert (tmp_path / "student" / LORA_FILE).is_file()
    x, t = torch.randn(2, *teacher.shape), torch.tensor([999, 500])
    cond = teacher.encode_condition(["a seven", "number two"])
    with torch.no_grad():
        trained = state.student.unet(x, t, encoder_hidden_states=cond).sample
        fused = StableDiffusionPipeline.from_pretrained(tmp_path / "student").unet(x, t, encoder_hidden_states=cond).sample
        pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "teacher")
        pipe.load_lora_weights(tmp_path / "student", weight_name=LORA_FILE)
        loaded = pipe.unet(x, t, encoder_hidden_states=cond).sample
        plain = teacher.unet(x, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(fused, trained, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loaded, trained, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain, trained, atol=1e-3)  # the adapters changed the network, so the checks can fail
