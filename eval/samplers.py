"""Samplers are pure functions (denoiser, noise, sigmas, cond) -> x0 (EDM, Karras et al. 2022)."""
from __future__ import annotations

import torch

from teachers.base import expand_sigma


def karras_sigma_at(t: torch.Tensor, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Sigma at ramp position t in [0, 1] of the Karras schedule (t=0: sigma_max, t=1: sigma_min; EDM eq. 5)."""
    inv_rho = 1 / rho
    return (sigma_max**inv_rho + t * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """num_steps decreasing sigmas from sigma_max to sigma_min, then a final 0 (EDM eq. 5)."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}; it must be >= 1")
    sigmas = karras_sigma_at(torch.linspace(0, 1, num_steps, dtype=torch.float64), sigma_min, sigma_max, rho)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()


def to_d(denoiser, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE: (x - D(x, sigma)) / sigma (EDM eq. 4 with s=1)."""
    return (x - denoiser(x, sigma.expand(x.shape[0]), cond)) / expand_sigma(sigma, x)


def start(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, cond=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A sampler's x at its first sigma, and the sigmas left to walk: noise * sigmas[0]. A first sigma of inf (a
    flow-matching teacher's t = 1) is the limit of Euler's first step from there, x = D(z, inf) + s_1 z (flow
    matching's Euler step from t = 1, exactly); one evaluation."""
    if not torch.isinf(sigmas[0]):
        return noise * sigmas[0], sigmas
    x0 = denoiser(denoiser.student_input(noise, sigmas[0]), sigmas[0].expand(noise.shape[0]), cond)
    return x0 + sigmas[1] * noise, sigmas[1:]


@torch.no_grad()
def euler(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, cond=None) -> torch.Tensor:
    """First-order Euler on the PF-ODE; noise ~ N(0, I) is scaled by sigmas[0]. NFE = len(sigmas) - 1."""
    x, sigmas = start(denoiser, noise, sigmas, cond)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (sigma_next - sigma) * to_d(denoiser, x, sigma, cond)
    return x


@torch.no_grad()
def heun(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, cond=None) -> torch.Tensor:
    """EDM Algorithm 1 (deterministic Heun, Euler on the last step and on a first step from inf). NFE = 2 (len(sigmas)
    - 1) - 1, one less from inf."""
    x, sigmas = start(denoiser, noise, sigmas, cond)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        d = to_d(denoiser, x, sigma, cond)
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            d_next = to_d(denoiser, x_next, sigma_next, cond)
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
        x = x_next
    return x


@torch.no_grad()
def dpmpp_2m(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, cond=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in t = -log sigma: a second-order multistep on x0. NFE = len(sigmas) - 1."""
    (x, sigmas), x0_prev, h_prev = start(denoiser, noise, sigmas, cond), None, None
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x0 = denoiser(x, sigma.expand(x.shape[0]), cond)
        if sigma_next == 0:  # the last step lands on the denoiser's estimate
            return x0
        h = sigma.log() - sigma_next.log()
        if x0_prev is not None:
            r = h_prev / h
            x0_prev, x0 = x0, (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        else:
            x0_prev = x0
        x = (sigma_next / sigma) * x - torch.expm1(-h) * x0
        h_prev = h
    return x


# DDIM (eta = 0) is Euler on the PF-ODE in sigma (Karras et al. 2022, sec. 3): one step equals
# diffusers' DDIMScheduler.step on the same timesteps (tests/test_unet.py).
SAMPLERS = {"euler": euler, "heun": heun, "ddim": euler, "dpmpp_2m": dpmpp_2m}


def sampler_nfe(name: str, num_steps: int, top: float = 0.0) -> int:
    """Network evaluations of a sampler over num_steps sigmas (plus the final 0); top: the first sigma (Heun's first
    step from inf is an Euler step)."""
    return 2 * num_steps - 1 - (top == float("inf")) if name == "heun" else num_steps


def get_sampler(name: str):
    """Look a sampler up by name, with a clear error."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; allowed: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def one_step(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, cond=None) -> torch.Tensor:
    """The one-step student G(z) = D(sigma_max z, sigma_max) (DMD); sigmas[0] is sigma_max. NFE = 1.

    Not under no_grad: the training step differentiates through it."""
    return denoiser(denoiser.student_input(noise, sigmas[0]), sigmas[0].expand(noise.shape[0]), cond)


def student_inputs(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, cond=None, generator=None, noise_like=None):
    """The input of each step of a k-step student, lazily: s_0 z, then x0 = D(x, s_j) re-noised to s_{j+1}
    (DMD2 sec. 4.5). Consumers stop early; each later input costs one network evaluation. The fresh noise comes from
    `generator`, or from noise_like(x0) when given (the preview server draws it per image, from each image's seed)."""
    x = denoiser.student_input(noise, sigmas[0])
    yield x
    for j in range(1, len(sigmas)):
        x0 = denoiser(x, sigmas[j - 1].expand(noise.shape[0]), cond)
        fresh = noise_like(x0) if noise_like is not None else torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = x0 + sigmas[j] * fresh
        yield x


def multistep_student(denoiser, noise: torch.Tensor, sigmas: torch.Tensor, cond=None, generator=None, noise_like=None) -> torch.Tensor:
    """A k-step student on its fixed sigma list: every step's input, then D at the last. NFE = k.

    sigmas: (k,) decreasing, sigmas[0] the noise level of the input; fresh noise comes from `generator` (or
    noise_like(x0), see student_inputs)."""
    for x in student_inputs(denoiser, noise, sigmas, cond, generator, noise_like):
        pass
    return denoiser(x, sigmas[-1].expand(noise.shape[0]), cond)
