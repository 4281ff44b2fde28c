"""A miniature Stable Diffusion trained here on MNIST (`zoo:mnist_sd`): every part small but real.

- an AutoencoderKL on 32x32 digits (MNIST padded by 2 px), 4 latent channels at 8x8, its scaling_factor set to
  1 / std of the training latents (as Stable Diffusion's 0.18215 was);
- a CLIPTextModel with a CLIPTokenizer whose BPE vocabulary is learned from the captions;
- a UNet2DConditionModel trained on the VAE's latents with the Stable Diffusion recipe (eps prediction on the
  scaled-linear DDPM schedule, uniform timesteps, eps MSE; the text encoder trains with it), captions drawn from
  several phrasings per digit and dropped to the empty prompt 10% of the time so that classifier-free guidance works.

The result is a StableDiffusionPipeline folder that stock diffusers loads and samples with its own 50-step scheduler.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from teachers.data import load_images
from teachers.errors import ConfigError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASINGS = (  # {w}: the digit's word, {d}: the numeral
    "a handwritten {w}", "the digit {d}", "number {w}", "a {w}", "{d}", "the number {w}, handwritten",
    "an image of the digit {w}", "{w}",
)
STROKES = {"thick": ", thick strokes", "thin": ", thin strokes"}
PAD = 2  # 28 -> 32 px: the VAE halves the size twice, to 8x8 latents


def caption(digit: int, phrasing: int, stroke: str | None = None) -> str:
    """One caption of a digit: a phrasing, and a stroke attribute when the image's ink is in its class's top or bottom third."""
    text = PHRASINGS[phrasing].format(w=DIGIT_WORDS[digit], d=digit)
    return text + (STROKES[stroke] if stroke else "")


def all_captions() -> list[str]:
    """Every caption the training can draw (the tokenizer's corpus)."""
    return [caption(d, p, s) for d in range(10) for p in range(len(PHRASINGS)) for s in (None, *STROKES)]


def prompt_set(per_digit: int | None = None) -> tuple[list[str], list[int]]:
    """Evaluation prompts and the digit each names: every phrasing of every digit (no stroke attribute)."""
    prompts = [(caption(d, p), d) for p in range(len(PHRASINGS)) for d in range(10)]
    if per_digit is not None:
        prompts = prompts[: 10 * per_digit]
    return [p for p, _ in prompts], [d for _, d in prompts]


def digit_of_prompt(prompt: str) -> int | None:
    """The digit a prompt names (its word or numeral), or None."""
    words = prompt.lower().replace(",", " ").split()
    for d, w in enumerate(DIGIT_WORDS):
        if w in words or str(d) in words:
            return d
    return None


def stroke_labels(images: torch.Tensor, labels: torch.Tensor) -> list[str | None]:
    """thick / thin / None per image: its ink (mean brightness) in the top / bottom third of its digit's images."""
    ink = images.flatten(1).mean(1)
    out: list[str | None] = [None] * len(images)
    for d in labels.unique().tolist():
        idx = (labels == d).nonzero().flatten()
        lo, hi = torch.quantile(ink[idx], torch.tensor([1 / 3, 2 / 3]))
        for i in idx.tolist():
            out[i] = "thick" if ink[i] > hi else "thin" if ink[i] < lo else None
    return out


def build_tokenizer(corpus: list[str], max_length: int):
    """A CLIPTokenizer whose byte-pair vocabulary and merges are learned from the corpus (tokenizers' BPE trainer with
    CLIP's end-of-word suffix), saved and reloaded the way a pipeline folder holds it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=4000, min_frequency=1, end_of_word_suffix="</w>", show_progress=False,
                                  special_tokens=["<|startoftext|>", "<|endoftext|>"])
    bpe.train_from_iterator([c.lower() for c in corpus], trainer)
    model = json.loads(bpe.to_str())["model"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab.write_text(json.dumps(model["vocab"]))
        pairs = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        merges.write_text("#version: 0.2\n" + "\n".join(pairs) + "\n")
        return CLIPTokenizer(str(vocab), str(merges), model_max_length=max_length, pad_token="<|endoftext|>")


def build_components(tokenizer, *, vae: dict, text: dict, unet: dict, scheduler: dict):
    """Fresh VAE, text encoder, UNet and scheduler of the sizes the config gives."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    levels = len(vae["block_out_channels"])
    autoencoder = AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=vae["latent_channels"], sample_size=28 + 2 * PAD,
        block_out_channels=tuple(vae["block_out_channels"]), layers_per_block=vae["layers_per_block"],
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=vae["norm_num_groups"],
    )
    vocab = tokenizer.get_vocab()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=text["hidden_size"], intermediate_size=4 * text["hidden_size"],
        num_hidden_layers=text["num_layers"], num_attention_heads=text["num_heads"], max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    ))
    latent_size = (28 + 2 * PAD) // 2 ** (levels - 1)
    n = len(unet["block_out_channels"])
    model = UNet2DConditionModel(
        sample_size=latent_size, in_channels=vae["latent_channels"], out_channels=vae["latent_channels"],
        block_out_channels=tuple(unet["block_out_channels"]), layers_per_block=unet["layers_per_block"],
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=text["hidden_size"], attention_head_dim=unet["attention_head_dim"], norm_num_groups=unet["norm_num_groups"],
    )
    # Stable Diffusion v1's own: PNDM over the scaled-linear schedule, eps prediction.
    sched = PNDMScheduler(**scheduler, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    return autoencoder, text_encoder, model, sched


def padded(images: torch.Tensor) -> torch.Tensor:
    """28x28 digits in [-1, 1] on a 32x32 background (-1)."""
    return F.pad(images, (PAD,) * 4, value=-1.0)


def train_vae(vae, images: torch.Tensor, *, max_steps: int, batch_size: int, lr: float, kl_weight: float, seed: int, progress: bool = True):
    """Reconstruction (L1 + MSE) plus a small KL to N(0, I), as the latent-diffusion autoencoders without their GAN."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(max_steps, 1))
    vae.train()
    bar = tqdm(range(max_steps), desc="vae", disable=not progress, mininterval=2)
    for _ in bar:
        x = images[torch.randint(len(images), (batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(gen)).sample
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean() + kl_weight * posterior.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def latent_moments(vae, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std for every image (unscaled)."""
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        dist = vae.encode(images[i : i + batch_size]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruction_error(vae, images: torch.Tensor) -> dict:
    """Mean absolute and squared error of decode(mean latent) on images in [-1, 1], and PSNR on [0, 1]."""
    mean, _ = latent_moments(vae, images)
    recon = torch.cat([vae.decode(mean[i : i + 500]).sample.clamp(-1, 1) for i in range(0, len(mean), 500)])
    mse = float(((recon - images) ** 2).mean())
    return {"l1": float((recon - images).abs().mean()), "mse": mse, "psnr_db": float(10 * np.log10(4 / mse)), "num_images": len(images)}


class CaptionedLatents:
    """Training draws of a miniature text-to-image model: latents from each image's VAE posterior (mean, std), each
    with the tokens of one of its captions, or of "" with probability caption_dropout (for classifier-free guidance)."""

    def __init__(self, tokenizer, latents: tuple[torch.Tensor, torch.Tensor], captions: list[list[str]], caption_dropout: float):
        self.mean, self.std = latents
        vocab = sorted({c for options in captions for c in options} | {""})
        self.ids = tokenizer(vocab, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
        index = {c: i for i, c in enumerate(vocab)}
        self.options = [torch.tensor([index[c] for c in opts]) for opts in captions]
        self.empty, self.caption_dropout = index[""], caption_dropout

    def draw(self, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(z0 (B, C, h, w), token ids (B, L)) of batch_size random images."""
        idx = torch.randint(len(self.mean), (batch_size,), generator=gen)
        z0 = self.mean[idx] + self.std[idx] * torch.randn(self.mean[idx].shape, generator=gen)
        pick = [int(self.options[i][torch.randint(len(self.options[i]), (1,), generator=gen)]) for i in idx.tolist()]
        drop = torch.rand(batch_size, generator=gen) < self.caption_dropout
        return z0, self.ids[torch.where(drop, self.empty, torch.tensor(pick))]


def train_unet(unet, text_encoder, tokenizer, scheduler, latents: tuple[torch.Tensor, torch.Tensor], captions: list[list[str]],
               *, max_steps: int, batch_size: int, lr: float, text_lr: float, caption_dropout: float, ema_decay: float, seed: int,
               progress: bool = True):
    """Stable Diffusion's loss: t ~ U{0..T-1}, x_t = sqrt(ab) z + sqrt(1 - ab) eps, MSE(eps_pred, eps); the text encoder
    trains with the UNet (its own learning rate); each image's caption is one of its phrasings, or "" (dropout)."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    gen = torch.Generator().manual_seed(seed)
    alphas_cumprod = DDPMScheduler.from_config(scheduler.config).alphas_cumprod
    batches = CaptionedLatents(tokenizer, latents, captions, caption_dropout)
    params = [{"params": unet.parameters(), "lr": lr}, {"params": text_encoder.parameters(), "lr": text_lr}]
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(max_steps, 1))
    ema = EMAModel(list(unet.parameters()) + list(text_encoder.parameters()), decay=ema_decay)
    unet.train()
    text_encoder.train()
    bar = tqdm(range(max_steps), desc="unet", disable=not progress, mininterval=2)
    for _ in bar:
        z0, token_ids = batches.draw(batch_size, gen)
        t = torch.randint(len(alphas_cumprod), (batch_size,), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        ab = alphas_cumprod[t].reshape(-1, 1, 1, 1)
        z_t = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
        emb = text_encoder(token_ids)[0]
        loss = F.mse_loss(unet(z_t, t, encoder_hidden_states=emb).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(list(unet.parameters()) + list(text_encoder.parameters()))
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    ema.copy_to(list(unet.parameters()) + list(text_encoder.parameters()))
    return unet.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False)


def training_digits(data_cfg: DictConfig, teacher: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split's 28x28 labelled digits, padded to 32x32, for teacher=<teacher> (a miniature text model)."""
    if data_cfg.get("source") not in ("mnist", "digits"):
        raise ConfigError(f"teacher={teacher} trains on labelled digits (data=mnist); data.source={data_cfg.get('source')}")
    images, labels = load_images(data_cfg, "train")
    if images.shape[-1] != 28:
        raise ConfigError(f"teacher={teacher} expects 28x28 digits (data=mnist); got {tuple(images.shape[1:])}")
    return padded(images), labels


def train_mini_sd(data_cfg: DictConfig, teacher_cfg: DictConfig, seed: int, max_steps: int | None = None, progress: bool = True):
    """Train the VAE, then the text encoder and UNet, on the training split; returns (LatentDenoiser, report dict)."""
    from teachers.latent import LatentDenoiser

    images, labels = training_digits(data_cfg, "sd_mini")
    net, fit = OmegaConf.to_container(teacher_cfg.net), OmegaConf.to_container(teacher_cfg.fit)
    tokenizer = build_tokenizer(all_captions(), net["text"]["max_length"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae, text_encoder, unet, scheduler = build_components(tokenizer, **net)
    vae = train_vae(vae, images, **fit["vae"], seed=seed, progress=progress)
    mean, std = latent_moments(vae, images)
    scale = round(float(1 / torch.cat([mean, mean + std * torch.randn_like(std)]).std()), 5)
    vae.register_to_config(scaling_factor=scale)  # unit-variance latents, as Stable Diffusion's 0.18215
    strokes = stroke_labels(images, labels)
    captions = [[caption(int(d), p, s) for p in range(len(PHRASINGS))] for d, s in zip(labels.tolist(), strokes)]
    unet_fit = dict(fit["unet"])
    if max_steps is not None:
        unet_fit["max_steps"] = max_steps
    unet, text_encoder = train_unet(unet, text_encoder, tokenizer, scheduler, (mean * scale, std * scale), captions,
                                    **unet_fit, seed=seed, progress=progress)
    test_images, _ = load_images(data_cfg, "test")
    report = {"vae_reconstruction_test": reconstruction_error(vae, padded(test_images)), "scaling_factor": scale}
    return LatentDenoiser(unet, scheduler, vae, text_encoder, tokenizer), report
