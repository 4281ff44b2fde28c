"""A miniature Stable Diffusion 3 trained here on MNIST (`zoo:mnist_sd3`): SD3's structure, every part small.

- the miniature SD's VAE (zoo:mnist_sd, 4 latent channels at 8x8) with SD3's latent normalisation: shift_factor the
  mean of the training latents, scaling_factor 1 / their std after the shift;
- two CLIPTextModelWithProjection encoders (SD3's CLIP-L and CLIP-G roles; their penultimate states side by side are
  the context, their projections side by side the pooled embedding), both on a CLIPTokenizer learned from the
  captions; no T5 (the pipeline pads with zeros: max_sequence_length 0 here, so no padding tokens);
- an SD3Transformer2DModel trained with SD3's rectified-flow loss (Esser et al. 2024): t ~ logit-normal(0, 1),
  x_t = (1 - t) x0 + t eps, MSE on v = eps - x0; the text encoders train with it; captions dropped to "" 10% of the
  time so that classifier-free guidance works.

The result is a StableDiffusion3Pipeline folder that stock diffusers samples with its own flow-matching Euler scheduler.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from teachers.mini_sd import (PHRASINGS, CaptionedLatents, all_captions, build_tokenizer, caption, latent_moments, stroke_labels,
                              training_digits)


def build_sd3_components(tokenizer, *, text: dict, transformer: dict, scheduler: dict):
    """Fresh text encoders, transformer and scheduler of the sizes the config gives."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    vocab = tokenizer.get_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=text["hidden_size"], intermediate_size=4 * text["hidden_size"], projection_dim=text["projection_dim"],
        num_hidden_layers=text["num_layers"], num_attention_heads=text["num_heads"], max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    )
    encoders = [CLIPTextModelWithProjection(config) for _ in range(2)]
    width = 2 * text["hidden_size"]  # both encoders' states side by side: the context's width (no T5 to pad to)
    inner = transformer["num_heads"] * transformer["head_dim"]
    network = SD3Transformer2DModel(
        sample_size=transformer["sample_size"], patch_size=2, in_channels=transformer["channels"], out_channels=transformer["channels"],
        num_layers=transformer["num_layers"], attention_head_dim=transformer["head_dim"], num_attention_heads=transformer["num_heads"],
        joint_attention_dim=width, caption_projection_dim=inner, pooled_projection_dim=2 * text["projection_dim"],
        pos_embed_max_size=transformer["sample_size"],
    )
    return encoders, network, FlowMatchEulerDiscreteScheduler(**scheduler)


def sd3_latent_norm(vae, images: torch.Tensor) -> tuple[float, float]:
    """(shift_factor, scaling_factor): the training latents' mean, and 1 / their std after the shift (SD3's VAE)."""
    mean, std = latent_moments(vae, images)
    draws = torch.cat([mean, mean + std * torch.randn_like(std)])
    shift = round(float(draws.mean()), 5)
    return shift, round(float(1 / (draws - shift).std()), 5)


def encode_text(encoders, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(context (B, L, 2H), pooled (B, 2P)) as StableDiffusion3Pipeline.encode_prompt makes them without T5: each
    encoder's penultimate hidden state side by side, and their projections side by side."""
    outs = [encoder(ids, output_hidden_states=True) for encoder in encoders]
    return torch.cat([o.hidden_states[-2] for o in outs], dim=-1), torch.cat([o.text_embeds for o in outs], dim=-1)


def train_transformer(transformer, encoders, tokenizer, latents: tuple[torch.Tensor, torch.Tensor], captions: list[list[str]], *,
                      max_steps: int, batch_size: int, lr: float, text_lr: float, caption_dropout: float, ema_decay: float,
                      logit_mean: float, logit_std: float, seed: int, progress: bool = True):
    """SD3's loss: t = sigmoid(n), n ~ N(logit_mean, logit_std^2); x_t = (1 - t) z0 + t eps; MSE(v_pred, eps - z0) with the
    network's timestep 1000 t; the encoders train with it (their own learning rate); each image's caption is one of its
    phrasings, or "" (dropout)."""
    from diffusers.training_utils import EMAModel

    gen = torch.Generator().manual_seed(seed)
    batches = CaptionedLatents(tokenizer, latents, captions, caption_dropout)
    text_params = [p for e in encoders for p in e.parameters()]
    opt = torch.optim.AdamW([{"params": transformer.parameters(), "lr": lr}, {"params": text_params, "lr": text_lr}], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(max_steps, 1))
    everything = list(transformer.parameters()) + text_params
    ema = EMAModel(everything, decay=ema_decay)
    for module in (transformer, *encoders):
        module.train()
    bar = tqdm(range(max_steps), desc="sd3 transformer", disable=not progress, mininterval=2)
    for _ in bar:
        z0, token_ids = batches.draw(batch_size, gen)
        t = torch.sigmoid(logit_mean + logit_std * torch.randn(batch_size, generator=gen))  # SD3's logit-normal t
        eps = torch.randn(z0.shape, generator=gen)
        x_t = (1 - t.view(-1, 1, 1, 1)) * z0 + t.view(-1, 1, 1, 1) * eps
        context, pooled = encode_text(encoders, token_ids)
        v = transformer(hidden_states=x_t, timestep=1000 * t, encoder_hidden_states=context, pooled_projections=pooled).sample
        loss = F.mse_loss(v, eps - z0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(everything, 1.0)
        opt.step()
        sched.step()
        ema.step(everything)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    ema.copy_to(everything)
    return transformer.eval().requires_grad_(False), [e.eval().requires_grad_(False) for e in encoders]


def train_mini_sd3(data_cfg: DictConfig, teacher_cfg: DictConfig, seed: int, max_steps: int | None = None, progress: bool = True):
    """The miniature SD's VAE renormalised, then the encoders and transformer, on the training split; returns
    (SD3Denoiser, report dict)."""
    from diffusers import AutoencoderKL

    from teachers.sd3 import SD3Denoiser
    from teachers.zoo import resolve_model_path

    images, labels = training_digits(data_cfg, "sd3_mini")
    net, fit = OmegaConf.to_container(teacher_cfg.net), OmegaConf.to_container(teacher_cfg.fit)
    vae = AutoencoderKL.from_pretrained(resolve_model_path(net["vae_from"]), subfolder="vae").eval().requires_grad_(False)
    tokenizer = build_tokenizer(all_captions(), net["text"]["max_length"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoders, transformer, scheduler = build_sd3_components(tokenizer, text=net["text"], transformer=net["transformer"],
                                                                scheduler=net["scheduler"])
        shift, scale = sd3_latent_norm(vae, images)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    mean, std = latent_moments(vae, images)
    strokes = stroke_labels(images, labels)
    captions = [[caption(int(d), p, s) for p in range(len(PHRASINGS))] for d, s in zip(labels.tolist(), strokes)]
    run = dict(fit)
    if max_steps is not None:
        run["max_steps"] = max_steps
    transformer, encoders = train_transformer(transformer, encoders, tokenizer, ((mean - shift) * scale, std * scale), captions, **run,
                                              seed=seed, progress=progress)
    texts = {"text_encoder": encoders[0], "tokenizer": tokenizer, "text_encoder_2": encoders[1], "tokenizer_2": tokenizer,
             "text_encoder_3": None, "tokenizer_3": None}
    report = {"shift_factor": shift, "scaling_factor": scale, "vae_from": net["vae_from"]}
    return SD3Denoiser(transformer, scheduler, vae, texts, max_sequence_length=0), report
