"""The CIFAR-10 preset (google/ddpm-cifar10-32, Inception protocol), run here on a tiny random UNet of the same structure."""
import json

import numpy as np
from conftest import compose_config
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from distill.loop import run
from teachers.io import save_pretrained_atomic
from teachers.unet import UNetDenoiser

# google/ddpm-cifar10-32's unet/config.json, with 8 channels per level instead of 128-256.
CIFAR_UNET = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(8, 8, 8, 8),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=4,
)


def test_the_preset_is_the_inception_protocol():
    cfg = compose_config("train", ["experiment=cifar10", "run_dir=unused"])
    assert cfg.teacher.path == "google/ddpm-cifar10-32" and cfg.data.mode == "RGB"
    assert (cfg.eval.num_samples, cfg.eval.feature_extractor, cfg.eval.reference_stats) == (50000, "inception", "cleanfid:cifar10:train:32")


def test_preset_distills_a_tiny_unet_of_the_same_structure(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(24):
        (tmp_path / "imgs" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "imgs" / str(i % 2) / f"{i}.png")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)  # epsilon, as the hub model
    teacher = save_pretrained_atomic(UNetDenoiser(UNet2DModel(**CIFAR_UNET), scheduler), tmp_path / "teacher")
    run_dir = tmp_path / "run"
    metrics = run(compose_config("train", [
        "experiment=cifar10", "debug=cpu_tiny_image", f"teacher.path={teacher}", "data=image_folder",
        f"data.path={tmp_path / 'imgs'}", "data.mode=RGB", "eval.feature_extractor=domain", "eval.reference_stats=null",
        "eval.num_samples=16", "eval.batch_size=16", f"eval.cache_dir={tmp_path / 'cache'}", f"run_dir={run_dir}",
    ]))
    assert set(metrics) == {"teacher_heun_nfe3", "student_nfe1"}
    assert json.loads((run_dir / "student" / "unet" / "config.json").read_text())["down_block_types"][1] == "AttnDownBlock2D"
    assert Image.open(run_dir / "samples" / "student_nfe1" / "000000.png").mode == "RGB"
