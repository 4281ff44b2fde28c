"""Teachers: every diffusion model wrapped as an EDM denoiser D(x, sigma, cond) -> x0."""
